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
        ({"n": 0}, InvalidRangeError, ["`n`", "[1, 128]", "0"]),
        ({"n": 129}, InvalidRangeError, ["`n`", "129"]),
        ({"n": 2, "stream": True}, InvalidRangeError, ["`n`", "stream=True"]),
        ({"top_k": -2}, InvalidRangeError, ["`top_k`", ">= 0"]),
        ({"frequency_penalty": 2.5}, InvalidRangeError, ["`frequency_penalty`", "[-2, 2]", "2.5"]),
        ({"presence_penalty": -3}, InvalidRangeError, ["`presence_penalty`", "[-2, 2]"]),
        ({"repetition_penalty": 0}, InvalidRangeError, ["`repetition_penalty`", "> 0"]),
        ({"frequency_penalty": False}, InvalidFieldTypeError, ["`frequency_penalty`", "number"]),
        ({"logit_bias": [1]}, InvalidFieldTypeError, ["`logit_bias`", "dict"]),
        ({"logit_bias": {"5": 101}}, InvalidRangeError, ["`logit_bias['5']`", "[-100, 100]", "101"]),
        ({"logit_bias": {"x": 1}}, InvalidFieldTypeError, ["`logit_bias['x']`", "token id"]),
        ({"logit_bias": {"5": 1, 5: 2}}, InvalidRangeError, ["`logit_bias[5]`", "twice"]),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, InvalidRangeError, ["`logit_bias`", "at most 300"]),
        ({"top_logprobs": 21, "logprobs": True}, InvalidRangeError, ["`top_logprobs`", "[0, 20]", "21"]),
        ({"top_logprobs": 2}, FieldDependencyError, ["`top_logprobs`", "logprobs=True"]),
        ({"logprobs": 1}, InvalidFieldTypeError, ["`logprobs`", "true or false"]),
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
    ("field", "value", "why"),
    [
        ("functions", [{"name": "f"}], "use tools"),
        ("function_call", "auto", "use tool_choice"),
        ("user", "someone", "abuse monitoring"),
    ],
)
def test_unsupported_fields_are_named(field, value, why):
    with pytest.raises(UnsupportedFieldError) as info:
        check(**{field: value})
    assert info.value.field == field
    assert f"`{field}`" in str(info.value) and why in str(info.value)


def test_all_unsupported_fields_named_at_once():
    with pytest.raises(UnsupportedFieldError) as info:
        check(functions=[{"name": "f"}], function_call="auto")
    assert info.value.field == "functions, function_call"


@pytest.mark.parametrize(
    ("field", "value"), [("tools", []), ("response_format", {"type": "text"}), ("tool_choice", None)]
)
def test_unsupported_fields_pass_with_their_no_op_value(field, value):
    assert check(**{field: value}).config == GenerationConfig()


def test_sampling_fields():
    config = check(
        frequency_penalty=0.5,
        presence_penalty=-1,
        repetition_penalty=1.1,
        logit_bias={"50": -100, 7: 2.5},
        logprobs=True,
        top_logprobs=20,
        top_k=-1,
        n=3,
    ).config
    assert (
        config.frequency_penalty == 0.5
        and config.presence_penalty == -1.0
        and config.repetition_penalty == 1.1
    )
    assert config.logit_bias == ((50, -100.0), (7, 2.5))
    assert config.logprobs and config.top_logprobs == 20 and config.top_k == 0 and config.n == 3


def test_logprobs_alone_means_zero_alternatives():
    config = check(logprobs=True).config
    assert config.logprobs and config.top_logprobs == 0


def test_extra_body_is_merged():
    config = check(extra_body={"enable_latency_breakdown": True, "top_k": 40}).config
    assert config.enable_latency_breakdown and config.top_k == 40
    with pytest.raises(UnsupportedFieldError, match="extra_body.top_k"):
        check(top_k=3, extra_body={"top_k": 40})
    with pytest.raises(UnsupportedFieldError, match="extra_body.bogus"):
        check(extra_body={"bogus": 1})


def test_developer_role_is_system_and_tool_messages_need_an_id():
    req = check_chat_completion_request(
        {
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
                {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
            ]
        }
    )
    assert [m.role for m in req.messages] == ["system", "user", "tool"]
    assert req.messages[2].to_dict() == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    with pytest.raises(InvalidMessagesError, match="tool_call_id"):
        check_chat_completion_request({"messages": [{"role": "tool", "content": "x"}]})


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
        ([{"content": "x"}], "messages[0].role", "one of system, developer, user, assistant, tool"),
        ([{"role": "function", "content": "x"}], "messages[0].role", "'function'"),
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
            "last message must have role 'user' or 'tool'",
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
        {"role": "assistant", "content": "", "audio": {"id": "1"}},
        {"role": "user", "content": "x"},
    ]
    with pytest.raises(UnsupportedFieldError) as info:
        check_chat_completion_request({"messages": messages})
    assert info.value.field == "messages[0].audio"


def test_long_values_are_shortened_in_messages():
    with pytest.raises(InvalidFieldTypeError) as info:
        check(seed="9" * 10_000)
    assert len(str(info.value)) < 200
