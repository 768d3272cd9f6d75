"""__NAME__: a flowhost hook in Python. It sees the machine's lifecycle events
and may replace the context or send a transition elsewhere.

This one guards transitions: one into a state whose name starts with
`unsafe_` goes to the state `review` instead.
"""

import wit_world
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo(
            name="__NAME__",
            version="0.1.0",
            kinds=["hook"],
            description="Sends transitions into unsafe_ states to review",
            config_schema=None,
        )

    def on_event(self, event: types.HookEvent, meta: types.CallMeta, context: str) -> types.HookOutcome:
        # context=<json text> replaces the machine's context; None keeps it.
        if isinstance(event, types.HookEvent_Transition) and event.value.to.startswith("unsafe_"):
            host.log(types.LogLevel.INFO, f"{event.value.from_} -> {event.value.to}: sent to review")
            return types.HookOutcome(context=None, redirect="review")
        return types.HookOutcome(context=None, redirect=None)
