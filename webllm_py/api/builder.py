"""``Messages()``: build a chat request's ``messages`` by chaining, instead of writing the dicts by hand.

    messages = Messages().system("Be brief.").user("Hi").assistant("Hello!").user("And now?")
    await engine.chat.completions.create(messages=messages)

A ``Messages`` is a list of plain OpenAI message dicts, so it goes wherever a list of dicts does (plain dicts stay
accepted everywhere, and ``protocol.py`` validates both the same way).
"""

from __future__ import annotations

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

    def tool(self, content: str, *, tool_call_id: str) -> Self:
        return self._add("tool", content, tool_call_id=tool_call_id)
