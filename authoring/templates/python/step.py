"""__NAME__: a flowhost step in Python. It does a state's work and may choose
the machine's next state.

Context: {"urgent": true}  ->  output {"lane": "fast"}, next state `fast`
otherwise                  ->  output {"lane": "normal"}, next state `normal`
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo(
            name="__NAME__",
            version="0.1.0",
            kinds=["step"],
            description="Sends urgent work to the fast lane",
            config_schema=None,
        )

    def run(self, meta: types.CallMeta, context: str) -> types.StepResult:
        data = json.loads(context)
        if not isinstance(data, dict):
            raise Err(types.PluginError_InvalidInput("the context must be an object"))
        lane = "fast" if data.get("urgent") is True else "normal"
        return types.StepResult(output=json.dumps({"lane": lane}), next=lane)
