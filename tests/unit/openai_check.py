"""Check our responses against openai-python's own pydantic types.

``finish_reason="abort"`` (WebLLM's, after an interrupt) is outside openai-python's Literal. A client is not broken
by it: openai-python parses responses leniently (``construct_type``), keeping the value as sent. So an "abort"
reply is validated strictly with that one field read as "stop", and leniently as sent, which must keep it.
The same holds for text-completion stream chunks before the last: OpenAI itself sends ``finish_reason: null``
there, which openai-python's ``Completion`` type (written for whole replies) does not allow."""

from __future__ import annotations

import copy
from typing import Any

from openai._models import construct_type
from openai.types import Completion as OpenAICompletion
from openai.types.chat import ChatCompletion as OpenAIChatCompletion
from openai.types.chat import ChatCompletionChunk as OpenAIChatCompletionChunk

_TYPES = {
    "chat.completion": OpenAIChatCompletion,
    "chat.completion.chunk": OpenAIChatCompletionChunk,
    "text_completion": OpenAICompletion,
}


def validate(response: Any) -> Any:
    """``response`` (one of our types, or its dict) validated by openai-python; returns the pydantic object."""
    data = response if isinstance(response, dict) else response.to_dict()
    model = _TYPES[data["object"]]
    strict = copy.deepcopy(data)
    aborted = False
    for choice in strict["choices"]:
        if choice.get("finish_reason") == "abort" or (
            data["object"] == "text_completion" and choice.get("finish_reason") is None
        ):
            choice["finish_reason"] = "stop"
            aborted = True
    parsed = model.model_validate(strict)
    if aborted:
        lenient = construct_type(type_=model, value=data)
        assert [c.finish_reason for c in lenient.choices] == [c["finish_reason"] for c in data["choices"]]
        return lenient
    return parsed
