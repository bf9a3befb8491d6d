"""Request validation: every check, its error class, and that the message names field, value and limit."""

from __future__ import annotations

import dataclasses

import pytest

from webllm_py.errors import (
    FieldDependencyError,
    InvalidFieldTypeError,
    InvalidMessagesError,
    InvalidRangeError,
    InvalidRequestError,
    UnsupportedFieldError,
)
from webllm_py.protocol import ChatMessage, GenerationConfig, check_chat_completion_request

USER = [{"role": "user", "content": "Hi"}]


def check(**fields):
    return check_chat_completion_request({"messages": USER, **fields})


def test_minimal_request_defaults():
    req = check()
    assert req.messages == (ChatMessage("user", "Hi"),)
    assert req.config == GenerationConfig()
    assert req.config.max_tokens is None and req.config.temperature is None and req.config.n == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.config.temperature = 0.5


def test_all_supported_fields():
    req = check(
        model="m",
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=16,
        temperature=0,
        top_p=0.5,
        seed=7,
        stop=["\n\n", "END"],
        n=1,
        ignore_eos=True,
    )
    assert req.config == GenerationConfig(
        max_tokens=16,
        temperature=0.0,
        top_p=0.5,
        seed=7,
        stop=("\n\n", "END"),
        ignore_eos=True,
        n=1,
        stream=True,
        include_usage=True,
        model="m",
    )
    assert isinstance(req.config.temperature, float)


def test_stop_as_single_string():
    assert check(stop="###").config.stop == ("###",)


def test_max_completion_tokens_alias():
    assert check(max_completion_tokens=5).config.max_tokens == 5
    assert check(max_tokens=5, max_completion_tokens=5).config.max_tokens == 5
    with pytest.raises(InvalidRangeError, match="max_completion_tokens"):
        check(max_tokens=5, max_completion_tokens=6)


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [
        ({"max_tokens": 0}, InvalidRangeError, ["`max_tokens`", "> 0", "0"]),
        ({"max_tokens": -3}, InvalidRangeError, ["`max_tokens`", "-3"]),
        ({"max_tokens": 2.5}, InvalidFieldTypeError, ["`max_tokens`", "integer", "2.5"]),
        ({"max_tokens": True}, InvalidFieldTypeError, ["`max_tokens`"]),
        ({"max_completion_tokens": 0}, InvalidRangeError, ["`max_completion_tokens`"]),
        ({"temperature": 2.5}, InvalidRangeError, ["`temperature`", "[0, 2]", "2.5"]),
        ({"temperature": -0.1}, InvalidRangeError, ["`temperature`", "-0.1"]),
        ({"temperature": "hot"}, InvalidFieldTypeError, ["`temperature`", "number", "'hot'"]),
        ({"temperature": float("nan")}, InvalidFieldTypeError, ["`temperature`", "finite"]),
        ({"top_p": 0}, InvalidRangeError, ["`top_p`", "(0, 1]"]),
        ({"top_p": 1.01}, InvalidRangeError, ["`top_p`", "1.01"]),
        ({"seed": 1.5}, InvalidFieldTypeError, ["`seed`", "integer", "1.5", "float"]),
        ({"seed": "42"}, InvalidFieldTypeError, ["`seed`"]),
        ({"stop": ["a", "b", "c", "d", "e"]}, InvalidRangeError, ["`stop`", "at most 4"]),
        ({"stop": 5}, InvalidFieldTypeError, ["`stop`", "string"]),
        ({"stop": ["ok", 5]}, InvalidFieldTypeError, ["`stop`"]),
        ({"stop": ""}, InvalidRangeError, ["`stop`", "non-empty"]),
        ({"n": 2}, InvalidRangeError, ["`n`", "1", "2"]),
        ({"n": "1"}, InvalidFieldTypeError, ["`n`"]),
        ({"ignore_eos": 1}, InvalidFieldTypeError, ["`ignore_eos`", "true or false"]),
        ({"stream": "yes"}, InvalidFieldTypeError, ["`stream`"]),
        ({"model": 3}, InvalidFieldTypeError, ["`model`"]),
        (
            {"stream_options": {"include_usage": True}},
            FieldDependencyError,
            ["`stream_options`", "stream=True"],
        ),
        (
            {"stream": True, "stream_options": {"include_usage": "y"}},
            InvalidFieldTypeError,
            ["stream_options.include_usage"],
        ),
        ({"stream": True, "stream_options": {"foo": 1}}, UnsupportedFieldError, ["stream_options.foo"]),
        ({"stream": True, "stream_options": [1]}, InvalidFieldTypeError, ["`stream_options`"]),
    ],
)
def test_invalid_values(fields, error, words):
    with pytest.raises(error) as info:
        check(**fields)
    assert isinstance(info.value, InvalidRequestError)
    for word in words:
        assert word in str(info.value)
    assert info.value.field == words[0].strip("`")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "auto"),
        ("logprobs", True),
        ("top_logprobs", 2),
        ("response_format", {"type": "json_object"}),
        ("frequency_penalty", 0.5),
        ("presence_penalty", -1),
        ("logit_bias", {"50256": -100}),
        ("user", "someone"),
    ],
)
def test_not_yet_supported_fields_are_named(field, value):
    with pytest.raises(UnsupportedFieldError) as info:
        check(**{field: value})
    assert info.value.field == field
    assert f"`{field}`" in str(info.value) and "not implemented yet" in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("frequency_penalty", 0),
        ("presence_penalty", 0.0),
        ("logprobs", False),
        ("tools", []),
        ("logit_bias", {}),
    ],
)
def test_not_yet_supported_fields_pass_with_their_no_op_value(field, value):
    assert check(**{field: value}).config == GenerationConfig()


def test_noop_value_must_match_type():
    # False == 0 in Python, but frequency_penalty=False is a client bug, not "no penalty".
    with pytest.raises(UnsupportedFieldError):
        check(frequency_penalty=False)


def test_unknown_field_is_named():
    with pytest.raises(UnsupportedFieldError, match="`max_token`.*not a chat-completion request field"):
        check(max_token=5)


def test_request_must_be_a_mapping():
    with pytest.raises(InvalidFieldTypeError, match="`request`"):
        check_chat_completion_request([("messages", USER)])


# ---- messages ------------------------------------------------------------------------------------------------


def test_conversation_with_system_and_history():
    req = check_chat_completion_request(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi", "name": "ann"},
                {"role": "assistant", "content": "Hello."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Line 1"}, {"type": "text", "text": "Line 2"}],
                },
            ]
        }
    )
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "user"]
    assert req.messages[1].to_dict() == {"role": "user", "content": "Hi", "name": "ann"}
    assert req.messages[3].content == "Line 1\nLine 2"
    assert req.messages[2].to_dict() == {"role": "assistant", "content": "Hello."}


def test_message_with_explicit_none_extras_is_fine():
    req = check_chat_completion_request({"messages": [{"role": "user", "content": "x", "tool_calls": None}]})
    assert req.messages[0].content == "x"


@pytest.mark.parametrize(
    ("messages", "field", "words"),
    [
        (None, "messages", "required"),
        ([], "messages", "non-empty"),
        ("Hi", "messages", "non-empty list"),
        (["Hi"], "messages[0]", "dict"),
        ([{"content": "x"}], "messages[0].role", "one of system, user, assistant"),
        ([{"role": "tool", "content": "x"}], "messages[0].role", "'tool'"),
        ([{"role": "developer", "content": "x"}], "messages[0].role", "'developer'"),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "system", "content": "b"},
                {"role": "user", "content": "c"},
            ],
            "messages[1]",
            "first message",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "messages[1].role",
            "last message must have role 'user'",
        ),
        ([{"role": "system", "content": "a"}], "messages[0].role", "last message"),
        ([{"role": "user", "content": None}], "messages[0].content", "string or a list of text parts"),
        ([{"role": "user", "content": 5}], "messages[0].content", "got 5"),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}],
                }
            ],
            "messages[0].content[0]",
            "'image_url'",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": 3}]}],
            "messages[0].content[0].text",
            "string",
        ),
        ([{"role": "user", "content": "x", "name": 3}], "messages[0].name", "string"),
    ],
)
def test_invalid_messages(messages, field, words):
    request = {} if messages is None else {"messages": messages}
    with pytest.raises(InvalidMessagesError) as info:
        check_chat_completion_request(request)
    assert info.value.field == field
    assert f"`{field}`" in str(info.value) and words in str(info.value)


def test_message_extra_keys_are_named():
    messages = [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]},
        {"role": "user", "content": "x"},
    ]
    with pytest.raises(UnsupportedFieldError) as info:
        check_chat_completion_request({"messages": messages})
    assert info.value.field == "messages[0].tool_calls"


def test_long_values_are_shortened_in_messages():
    with pytest.raises(InvalidFieldTypeError) as info:
        check(seed="9" * 10_000)
    assert len(str(info.value)) < 200
