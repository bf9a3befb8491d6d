"""``Messages()``: build a chat request's ``messages`` by chaining, instead of writing the dicts by hand.

    messages = Messages().system("Be brief.").user("Hi").assistant("Hello!").user("And now?")
    await engine.chat.completions.create(messages=messages)

Tool calls and their results go back the same way::

    reply = await engine.chat.completions.create(messages=messages, tools=tools)
    calls = reply.choices[0].message.tool_calls
    messages.assistant_tool_calls(calls).tool(calls[0].id, '{"temperature": 21}')

A ``Messages`` is a list of plain OpenAI message dicts, so it goes wherever a list of dicts does (plain dicts stay
accepted everywhere, and ``protocol.py`` validates both the same way).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Self

from .types import ChatCompletionMessageParam


class Messages(list[ChatCompletionMessageParam]):
    def _add(self, role: str, content: str, **extra: Any) -> Self:
        message: dict[str, Any] = {"role": role, "content": content}
        message.update({k: v for k, v in extra.items() if v is not None})
        self.append(message)  # type: ignore[arg-type]
        return self

    def system(self, content: str) -> Self:
        return self._add("system", content)

    def developer(self, content: str) -> Self:
        """OpenAI's newer name for the system role; rendered as system."""
        return self._add("developer", content)

    def user(self, content: str, *, name: str | None = None) -> Self:
        return self._add("user", content, name=name)

    def assistant(self, content: str) -> Self:
        return self._add("assistant", content)

    def assistant_tool_calls(self, calls: Iterable[Any], content: str | None = None) -> Self:
        """An assistant turn that called tools: ``calls`` as a reply's ``message.tool_calls`` holds them (ours or
        openai-python's objects), or OpenAI's dicts; arguments given as a dict are written as JSON text."""
        out = []
        for c in calls:
            if isinstance(c, dict):
                call_id, fn = c["id"], c["function"]
                name, arguments = fn["name"], fn["arguments"]
            else:
                call_id, name, arguments = c.id, c.function.name, c.function.arguments
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments, ensure_ascii=False)
            out.append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            )
        self.append({"role": "assistant", "content": content, "tool_calls": out})  # type: ignore[arg-type]
        return self

    def tool(self, call_id: str, content: str | None = None, *, tool_call_id: str | None = None) -> Self:
        """The result of tool call ``call_id`` (``tool(content, tool_call_id=...)`` works too)."""
        if tool_call_id is not None:
            call_id, content = tool_call_id, call_id
        return self._add("tool", content if content is not None else "", tool_call_id=call_id)
