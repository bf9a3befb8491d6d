"""Wire types: attribute access like openai-python, JSON exactly OpenAI's, checked with openai-python's own
pydantic models."""

from __future__ import annotations

import json

import pytest

openai_chat = pytest.importorskip("openai.types.chat")

from webllm_py.api.types import (  # noqa: E402
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    Choice,
    ChoiceDelta,
    ChunkChoice,
    CompletionUsage,
)

EXTRA = {
    "prefill_tokens_per_s": 812.5,
    "decode_tokens_per_s": 95.25,
    "time_to_first_token_s": 0.031,
    "time_per_output_token_s": 0.0105,
    "e2e_latency_s": 0.2,
}


def usage() -> CompletionUsage:
    return CompletionUsage(prompt_tokens=12, completion_tokens=7, total_tokens=19, extra=dict(EXTRA))


def completion(finish_reason="stop") -> ChatCompletion:
    return ChatCompletion(
        id="chatcmpl-abc",
        choices=[
            Choice(index=0, message=ChatCompletionMessage(content="Hello!"), finish_reason=finish_reason)
        ],
        created=1_700_000_000,
        model="SmolLM2-135M-Instruct-Q4_1",
        usage=usage(),
    )


def test_completion_json_is_openai_shape():
    d = completion().to_dict()
    assert d == {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "SmolLM2-135M-Instruct-Q4_1",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, "extra": EXTRA},
    }
    json.dumps(d)  # plain JSON types only


@pytest.mark.parametrize("finish_reason", ["stop", "length"])
def test_completion_validates_with_openai(finish_reason):
    ours = completion(finish_reason)
    theirs = openai_chat.ChatCompletion.model_validate(ours.to_dict())
    assert theirs.choices[0].message.content == "Hello!"
    assert theirs.choices[0].finish_reason == finish_reason
    assert theirs.usage.total_tokens == 19
    # usage.extra is not an OpenAI field: it must survive as an extra field, not be dropped.
    assert theirs.usage.model_extra["extra"] == EXTRA
    assert theirs.model_dump(exclude_unset=True) == ours.to_dict()


def test_abort_finish_reason_is_webllm_extension():
    # WebLLM's "abort" is not in openai-python's Literal; this documents that only it fails there.
    with pytest.raises(ValueError, match="finish_reason"):
        openai_chat.ChatCompletion.model_validate(completion("abort").to_dict())


def test_chunk_sequence_validates_with_openai():
    chunks = [
        ChatCompletionChunk(
            "chatcmpl-x", [ChunkChoice(0, ChoiceDelta(content="He", role="assistant"))], 1, "m"
        ),
        ChatCompletionChunk("chatcmpl-x", [ChunkChoice(0, ChoiceDelta(content="llo"))], 1, "m"),
        ChatCompletionChunk("chatcmpl-x", [ChunkChoice(0, ChoiceDelta(), finish_reason="length")], 1, "m"),
        ChatCompletionChunk("chatcmpl-x", [], 1, "m", usage=usage()),
    ]
    dicts = [c.to_dict() for c in chunks]
    assert dicts[0]["choices"][0]["delta"] == {"role": "assistant", "content": "He"}
    assert dicts[1]["choices"][0]["delta"] == {"content": "llo"}
    assert dicts[2]["choices"][0]["delta"] == {}  # OpenAI's last delta is empty
    assert dicts[2]["choices"][0]["finish_reason"] == "length"
    assert dicts[0]["usage"] is None and dicts[0]["object"] == "chat.completion.chunk"
    for d in dicts:
        theirs = openai_chat.ChatCompletionChunk.model_validate(d)
        assert theirs.model_dump(exclude_unset=True) == d
    theirs = openai_chat.ChatCompletionChunk.model_validate(dicts[3])
    assert theirs.choices == [] and theirs.usage.model_extra["extra"] == EXTRA


def test_attribute_access_like_openai():
    chunk = ChatCompletionChunk(
        "chatcmpl-x", [ChunkChoice(0, ChoiceDelta(content="hi", role="assistant"))], 1, "m"
    )
    assert chunk.choices[0].delta.content == "hi"
    assert chunk.choices[0].delta.role == "assistant"
    assert chunk.choices[0].finish_reason is None
    c = completion()
    assert c.choices[0].message.content == "Hello!" and c.usage.extra["decode_tokens_per_s"] == 95.25


def test_round_trip_from_dict():
    c = completion()
    assert ChatCompletion.from_dict(c.to_dict()) == c
    assert ChatCompletion.from_dict(json.loads(c.to_json())) == c
    chunk = ChatCompletionChunk(
        "chatcmpl-x", [ChunkChoice(0, ChoiceDelta(content="é"), "stop")], 5, "m", usage()
    )
    assert ChatCompletionChunk.from_dict(chunk.model_dump()) == chunk
    # from an openai-python object's dump, too
    theirs = openai_chat.ChatCompletion.model_validate(c.to_dict())
    assert ChatCompletion.from_dict(theirs.model_dump()) == c


def test_exclude_none():
    d = completion().to_dict(exclude_none=True)
    assert "system_fingerprint" not in d
    assert d["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "Hello!"},
        "finish_reason": "stop",
    }
