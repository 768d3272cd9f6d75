"""__NAME__: a flowhost processor in Python. It gets the input as JSON text and
returns its output as JSON text, or raises an error the engine understands.

Input:  {"name": "Ada"}
Output: {"greeting": "Hello, Ada!"}
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo(
            name="__NAME__",
            version="0.1.0",
            kinds=["processor"],
            description="Greets by name",
            config_schema=None,
        )

    def process(self, meta: types.CallMeta, input: str) -> str:
        data = json.loads(input)
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str):
            # invalid-input: the engine does not retry; PluginError_Retryable would.
            raise Err(types.PluginError_InvalidInput("`name` must be a string"))
        host.log(types.LogLevel.DEBUG, f"greeting {name}")
        return json.dumps({"greeting": f"Hello, {name}!"})
