"""sentiment: keyword sentiment scoring, a flowhost processor written in Python.

Input:  {"text": "..."}            (a string; anything else is invalid input)
Config: {"positive": [...], "negative": [...]}   extra words for either list
Output: {"score": <-1.0..1.0>, "label": "positive"|"negative"|"neutral",
         "positive": [words found], "negative": [words found], "words": <count>}

For the sandbox tests, an input with "_spin": true loops forever (it must be
stopped by the host's time limit) and "_fail": "<kind>" returns that plugin error.
"""

import json
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

POSITIVE = {"good", "great", "excellent", "love", "happy", "fast", "safe", "pleasant", "best", "nice", "clean"}
NEGATIVE = {"bad", "terrible", "awful", "hate", "sad", "slow", "broken", "worst", "ugly", "bug", "crash"}
WORD = re.compile(r"[a-z']+")


def fail(kind: str, message: str):
    errors = {
        "invalid_input": types.PluginError_InvalidInput,
        "retryable": types.PluginError_Retryable,
        "fatal": types.PluginError_Fatal,
    }
    return Err(errors.get(kind, types.PluginError_Fatal)(message))


def word_set(config: dict, key: str) -> set:
    words = config.get(key, [])
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise fail("invalid_input", f"config `{key}` must be a list of strings")
    return {w.lower() for w in words}


class WitWorld(wit_world.WitWorld):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo(
            name="sentiment",
            version="0.1.0",
            kinds=["processor"],
            description="Keyword sentiment scoring (Python)",
            config_schema=None,
        )

    def process(self, meta: types.CallMeta, input: str) -> str:
        try:
            data = json.loads(input)
        except ValueError as e:
            raise fail("invalid_input", f"input is not JSON: {e}")
        if not isinstance(data, dict):
            raise fail("invalid_input", "input must be an object with a `text` field")
        if data.get("_spin"):
            while True:
                pass
        if "_fail" in data:
            raise fail(str(data["_fail"]), "failure requested by the input")
        text = data.get("text")
        if not isinstance(text, str):
            raise fail("invalid_input", "`text` must be a string")
        try:
            config = json.loads(host.config())
        except ValueError:
            config = {}
        positive_words = POSITIVE | word_set(config, "positive")
        negative_words = NEGATIVE | word_set(config, "negative")

        words = WORD.findall(text.lower())
        positive = [w for w in words if w in positive_words]
        negative = [w for w in words if w in negative_words]
        hits = len(positive) + len(negative)
        score = 0.0 if hits == 0 else round((len(positive) - len(negative)) / hits, 3)
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        host.log(types.LogLevel.DEBUG, f"scored {len(words)} words: {label}")
        return json.dumps(
            {"score": score, "label": label, "positive": positive, "negative": negative, "words": len(words)}
        )
