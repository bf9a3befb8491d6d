"""The worker protocol: one envelope, a closed set of kinds, errors as ``{name, message}``.

Every message, either way, is ``{"kind": str, "uuid": str, "content": ...}`` and plain JSON (dicts, lists,
strings, numbers, booleans, null), so it survives ``postMessage``'s structured clone and a ``JSON.stringify`` round
trip unchanged. The page sends a request; the worker answers it with exactly one ``return`` or ``throw`` carrying
the same uuid, and may send ``initProgressCallback`` messages before that while a model loads. This mirrors
WebLLM's ``src/message.ts`` (webllm_anchor.md section 3); ``web/webllm_py.js`` is the JS side of the same table.

Requests (page -> worker), ``content`` per kind:

===============================  ==============================================================  ================
kind                             content                                                         return
===============================  ==============================================================  ================
reload                           ``{modelId: [id], chatOpts?: ChatOptions or one per id}``       null
                                 (``protocol.check_chat_options``: context_window_size,
                                 chat_template, sampling defaults)
unload                           null                                                            null
chatCompletionNonStreaming       ``{request, modelId?: [id], chatOpts?}``                        ChatCompletion
chatCompletionStreamInit         ``{request, selectedModelId?, modelId?, chatOpts?}``            null
completionNonStreaming           as chatCompletionNonStreaming (text completion)                 Completion
completionStreamInit             as chatCompletionStreamInit (text completion)                   null
completionStreamNextChunk        ``{streamId, selectedModelId?}``                                chunk or null
interruptGenerate                null, or ``{streamId}`` to end that stream only                 null
resetChat                        ``{keepStats?: bool, modelId?}``                                null
getMessage                       ``{modelId?}``                                                  str
runtimeStatsText                 ``{modelId?}``                                                  str
forwardTokensAndSample           ``{inputIds: [int], isPrefill: bool, modelId?}``                int (token id)
getGPUVendor                     null                                                            str
getMaxStorageBufferBindingSize   null                                                            int (bytes)
setLogLevel                      ``"TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR" | "SILENT"``    null
setAppConfig                     an app config dict (``app_config_to_dict``)                      null
getAppConfig                     null                                                            app config dict
hasModelInCache                  ``{modelId}``                                                   bool
deleteModelInCache               ``{modelId}``                                                   null
keepAlive                        null                                                            a ``heartbeat``
===============================  ==============================================================  ================

Replies (worker -> page): ``return`` (content: the value above), ``throw`` (content: ``{name, message,
details?}``), ``initProgressCallback`` (content: ``{progress, timeElapsed, text}``; uuid: the request that is
loading, or ``""`` for the worker's own start-up), ``heartbeat`` (the answer to ``keepAlive``, same uuid; content:
``{pending: [uuid, ...]}``, the requests from that client the worker holds and has not answered yet).

``keepAlive`` / ``heartbeat`` are the service-worker hosts' liveness check (``worker/service_worker.py``): a client
sends ``keepAlive`` every few seconds (an event, which also keeps the browser from stopping an idle service
worker); every request it sent before a ``keepAlive`` has been answered before the ``heartbeat`` arrives, or is in
``pending``. One that is neither was lost with a worker the browser stopped, and the client fails it with
``EngineLostError`` instead of waiting forever; so do missed heartbeats. WebLLM only counts the missed ones.

Differences from WebLLM, on purpose:

- A stream is named by the uuid of its ``*StreamInit`` request (``streamId``), not by its model id, so a late pull
  from an abandoned stream can never receive chunks of the request that replaced it.
- ``interruptGenerate`` may name a stream: a consumer that leaves ``for await`` early ends its own stream and frees
  the engine at once (WebLLM keeps the model locked until the stream is drained, mlc-ai/mlc-llm#3113).
- Every request is answered, including ``interruptGenerate``, ``setLogLevel``, ``setAppConfig`` and unknown kinds
  (``UnknownMessageKindError``): nothing the page awaits can hang on a missing reply.
- Errors cross as ``{name, message, details}`` and are raised again as the same class (WebLLM sends a string).
- ``getAppConfig`` (ours) lets a page list the models the worker knows, e.g. for a model picker.
- A ``reload`` whose load a later ``reload`` or ``unload`` aborted is answered with ``throw``
  ``ReloadAbortedError``; the proxies resolve that ``reload()`` with a warning (WebLLM's behaviour) and do not take
  its model as loaded.
"""

from __future__ import annotations

import builtins
import json
import math
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from webllm_py import errors
from webllm_py.config import app_config_from_dict, app_config_to_dict  # noqa: F401 (the protocol's app config form)
from webllm_py.errors import (
    InvalidFieldTypeError,
    InvalidJSONError,
    UnknownMessageKindError,
    UnsupportedFieldError,
    WebLLMError,
    WorkerError,
    _show,
)
from webllm_py.protocol import MAX_JSON_DEPTH, check_text

# ---- what each kind's content holds -----------------------------------------------------------------------------
# ``parse_request`` checks a request's content against its kind's entry here, so no handler method ever sees a
# content it would fail on (a list where an object belongs, an unhashable stream id): every such message is
# answered with a typed ``throw`` naming the field. What is checked where it is used (the OpenAI request by
# protocol.py, ``chatOpts`` by ``check_chat_options``, an app config by ``app_config_from_dict``) only has to be
# JSON here. A new kind is one entry here and one ``_<kind>`` method on the handler.

Check = Callable[[Any, str], None]


def _string(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise InvalidFieldTypeError(where, value, "a string")


def _boolean(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise InvalidFieldTypeError(where, value, "true or false")


def _object(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise InvalidFieldTypeError(where, value, "an object")


def _model_ids(value: Any, where: str) -> None:
    if not (isinstance(value, str) or isinstance(value, list) and all(isinstance(i, str) for i in value)):
        raise InvalidFieldTypeError(where, value, "a model id string or a list of them")


def _json(value: Any, where: str) -> None:
    """Any JSON (``plain`` has checked that already); its meaning is checked where it is used."""


@dataclass(frozen=True)
class Field:
    check: Check
    required: bool = False


_GENERATE = {"request": Field(_object, required=True), "modelId": Field(_model_ids), "chatOpts": Field(_json)}
_STREAM_INIT = {**_GENERATE, "selectedModelId": Field(_string)}
_ONE_MODEL = {"modelId": Field(_string)}

# kind -> the keys of its (object) content, or a check of the whole content, or None: no content (null).
CONTENT: dict[str, Mapping[str, Field] | Check | None] = {
    "reload": {"modelId": Field(_model_ids, required=True), "chatOpts": Field(_json)},
    "unload": None,
    "chatCompletionNonStreaming": _GENERATE,
    "chatCompletionStreamInit": _STREAM_INIT,
    "completionNonStreaming": _GENERATE,
    "completionStreamInit": _STREAM_INIT,
    # WebLLM's own client names the stream by its model only (selectedModelId); ours by the init's uuid
    "completionStreamNextChunk": {"streamId": Field(_string), "selectedModelId": Field(_string)},
    "interruptGenerate": {"streamId": Field(_string)},
    "resetChat": {"keepStats": Field(_boolean), **_ONE_MODEL},
    "getMessage": _ONE_MODEL,
    "runtimeStatsText": _ONE_MODEL,
    # the engine checks the ids (a list of token ids in the vocabulary), naming inputIds
    "forwardTokensAndSample": {
        "inputIds": Field(_json, required=True),
        "isPrefill": Field(_boolean),
        **_ONE_MODEL,
    },
    "getGPUVendor": None,
    "getMaxStorageBufferBindingSize": None,
    "setLogLevel": _string,
    "setAppConfig": _object,
    "getAppConfig": None,
    "hasModelInCache": {"modelId": Field(_model_ids, required=True)},
    "deleteModelInCache": {"modelId": Field(_model_ids, required=True)},
    "keepAlive": None,
}
REQUEST_KINDS = frozenset(CONTENT)
RESPONSE_KINDS = frozenset({"return", "throw", "initProgressCallback", "heartbeat"})

# WebLLM's LogLevel names -> Python logging levels (SILENT: above CRITICAL, so nothing is logged).
LOG_LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40, "SILENT": 60}

# Python built-ins an error from the worker may be raised again as; anything else becomes WorkerError.
_BUILTIN_ERRORS = frozenset(
    {
        "ValueError",
        "TypeError",
        "KeyError",
        "IndexError",
        "RuntimeError",
        "NotImplementedError",
        "MemoryError",
    }
)
MAX_DETAIL_CHARS = 2000  # an error's attribute bigger than this as JSON crosses as its short repr
MAX_STACK_CHARS = 8000  # the end of a worker-side traceback (a RecursionError's is thousands of lines)


# ---- envelope ---------------------------------------------------------------------------------------------------


def make_message(kind: str, uuid: str, content: Any = None) -> dict[str, Any]:
    return {"kind": kind, "uuid": uuid, "content": content}


def parse_request(message: Any) -> tuple[str, str, Any]:
    """``(kind, uuid, content)`` of a request, its content checked against ``CONTENT``; anything outside the
    protocol raises a typed error (``UnknownMessageKindError`` for the envelope, the field's error for content).

    The error carries ``uuid`` when the envelope had a usable one (a non-empty string), so the handler can still
    answer it; else ``uuid`` is None and the answer goes out with uuid ``""``."""
    uuid = message.get("uuid") if isinstance(message, Mapping) else None
    if not isinstance(uuid, str) or not uuid:
        raise _with_uuid(
            UnknownMessageKindError(
                f"a worker message must be {{kind, uuid, content}}; got {_show(message)}"
            ),
            None,
        )
    try:
        kind = message.get("kind")
        if not isinstance(kind, str) or kind not in CONTENT:
            raise UnknownMessageKindError(
                f"unknown message kind {_show(kind)}; the worker understands: {', '.join(sorted(CONTENT))}"
            )
        return kind, uuid, check_content(kind, plain(message.get("content")))
    except WebLLMError as e:
        raise _with_uuid(e, uuid) from None
    except Exception as e:  # a host's stand-in for a JS object that misbehaves: still a typed answer
        raise _with_uuid(
            UnknownMessageKindError(f"a malformed worker message: {type(e).__name__}"), uuid
        ) from e


def _with_uuid(error: WebLLMError, uuid: str | None) -> WebLLMError:
    error.uuid = uuid  # type: ignore[attr-defined]
    return error


def check_content(kind: str, content: Any) -> Any:
    """``content`` (plain JSON already) checked against ``CONTENT[kind]``; an object kind's absent content is
    ``{}``, and keys whose value is null are left out (JS ``null``: not given)."""
    spec = CONTENT[kind]
    if spec is None:
        if content is None or content == {}:
            return None
        raise InvalidFieldTypeError("content", content, f"null ({kind} takes no content)")
    if callable(spec):
        if content is None:
            raise InvalidFieldTypeError("content", content, f"the {kind} value")
        spec(content, "content")
        return content
    if content is None:
        content = {}
    if not isinstance(content, Mapping):
        raise InvalidFieldTypeError("content", content, f"an object with {', '.join(spec)}")
    out = {}
    for key, value in content.items():
        if key not in spec:
            raise UnsupportedFieldError(f"content.{key}", value, f"{kind} takes {', '.join(spec)}")
        if value is not None:
            spec[key].check(value, f"content.{key}")
            out[key] = value
    for key, field in spec.items():
        if field.required and key not in out:
            raise InvalidFieldTypeError(f"content.{key}", None, f"given ({kind} needs it)")
    return out


def plain(value: Any, where: str = "content") -> Any:
    """``value`` as plain JSON data (dicts with string keys, lists, strings, finite numbers, booleans, null), or a
    typed error naming the path to what is not: nesting deeper than ``MAX_JSON_DEPTH``, NaN or Infinity, an integer
    beyond 64 bits, text that is not valid Unicode, an object that is not data. No recursion: a message nested
    100,000 deep costs a loop, not the stack.

    A host's JS-to-Python conversion may leave stand-ins for JS ``null`` (Pyodide's ``to_py()`` gives ``jsnull``,
    which is falsy but not None): anything that is not JSON data and is falsy becomes None, so
    ``{"max_tokens": null}`` means "not given", as in OpenAI's API."""
    root: list[Any] = [None]
    # (value, the container it goes in, its key there, its depth, its path as (parent path, key) links)
    stack: list[tuple[Any, Any, Any, int, Any]] = [(value, root, 0, 0, where)]
    while stack:
        v, parent, key, depth, path = stack.pop()
        if v is None or isinstance(v, bool):
            out = v
        elif isinstance(v, int):
            if not -(2**63) <= v < 2**64:
                raise InvalidJSONError(_path(path), f"{_show(v)} is beyond a 64-bit integer")
            out = v
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise InvalidJSONError(
                    _path(path), f"{v} is not JSON (NaN and Infinity are not numbers there)"
                )
            out = v
        elif isinstance(v, str):
            out = check_text(v, _path(path))
        elif isinstance(v, Mapping | list | tuple):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidJSONError(_path(path), f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(v, Mapping):
                out = {}
                for k, item in v.items():
                    if isinstance(k, int) and not isinstance(k, bool):
                        k = str(k)  # as json.dumps writes it
                    if not isinstance(k, str):
                        raise InvalidJSONError(_path(path), f"an object key must be a string; got {_show(k)}")
                    check_text(k, _path((path, k)))
                    out[k] = None
                    stack.append((item, out, k, depth + 1, (path, k)))
            else:
                out = [None] * len(v)
                for i, item in enumerate(v):
                    stack.append((item, out, i, depth + 1, (path, i)))
        elif not v:
            out = None
        else:
            raise InvalidJSONError(
                _path(path), f"a worker message holds JSON data only; got {type(v).__name__}"
            )
        parent[key] = out
    return root[0]


def _path(path: Any) -> str:
    """``content.request.messages[0]`` from plain()'s (parent, key) links."""
    parts = []
    while isinstance(path, tuple):
        path, key = path
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return path + "".join(reversed(parts))


# ---- errors -----------------------------------------------------------------------------------------------------


def error_to_content(exc: BaseException) -> dict[str, Any]:
    """``{name, message, details}``: the class name, the message, and the error's JSON-able attributes (``field``,
    ``value``, ``allowed``...; a big one as its short repr); for errors that are not ours, the worker-side traceback
    as ``details.stack``. Never raises: whatever the error holds, the request still gets its ``throw``."""
    if isinstance(exc, WorkerError):
        name = str(exc.name)  # a remote error passed on: keep its original name
        message = _text_of(exc.args[0]) if exc.args else ""
        message = message.removeprefix(f"{name}: ")
    else:
        name = type(exc).__name__
        message = _text_of(exc.args[0]) if len(exc.args) == 1 and isinstance(exc, KeyError) else _text_of(exc)
    details: dict[str, Any] = {}
    try:
        attributes = list(vars(exc).items())
    except TypeError:
        attributes = []
    for key, value in attributes:
        if not isinstance(key, str) or key.startswith("_") or key in ("name", "uuid"):
            continue
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            continue
        details[key] = value if len(text) <= MAX_DETAIL_CHARS else _show(value)
    if not isinstance(exc, WebLLMError):
        # Not a failure we raise on purpose: most likely a bug, so the worker-side stack is worth carrying.
        try:
            details["stack"] = "".join(traceback.format_exception(exc))[-MAX_STACK_CHARS:]
        except Exception:
            pass
    return {"name": name, "message": message, "details": details}


def _text_of(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<a {type(value).__name__} whose text cannot be shown>"


def error_from_content(content: Any) -> BaseException:
    """The exception a ``throw`` reply stands for: the class of that name from ``webllm_py.errors``, a Python
    built-in from a short list, else ``WorkerError`` keeping the name. Attributes from ``details`` are restored."""
    if not isinstance(content, Mapping):
        return WorkerError("", f"the worker threw {_show(content)}")
    name = str(content.get("name") or "Error")
    message = str(content.get("message") or "")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, WebLLMError)) and name in _BUILTIN_ERRORS:
        cls = getattr(builtins, name)
    if not (isinstance(cls, type) and issubclass(cls, Exception)) or cls is WorkerError:
        return WorkerError(name, message)
    # Our classes build their message from named arguments (InvalidRangeError(field, value, allowed)); the message
    # is already built, so skip __init__ and set the attributes it would have set.
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    details = content.get("details")
    if isinstance(details, Mapping):
        for key, value in details.items():
            if isinstance(key, str) and not key.startswith("_"):
                setattr(exc, key, value)
    return exc


# ---- app config and chat options --------------------------------------------------------------------------------
# The app config's JSON form is config.py's (app_config_from_dict / app_config_to_dict, WebLLM's keys included).


def model_id_list(model_id: Any, field: str = "modelId") -> list[str] | None:
    """The model ids of a WebLLM ``modelId`` (a string, or a list of them); None when absent."""
    if model_id is None or model_id == []:
        return None
    ids = model_id if isinstance(model_id, list) else [model_id]
    for i in ids:
        if not isinstance(i, str):
            raise InvalidFieldTypeError(field, model_id, "a model id string or a list of them")
    return list(ids)


def single_model_id(model_id: Any, field: str = "modelId") -> str | None:
    """The one model id of a WebLLM ``modelId`` (a string, or a list of one); None when absent."""
    if model_id is None:
        return None
    if isinstance(model_id, list):
        if len(model_id) > 1:
            raise UnsupportedFieldError(
                field, model_id, "one model per engine (several models is not supported yet)"
            )
        return single_model_id(model_id[0], field) if model_id else None
    if not isinstance(model_id, str):
        raise UnsupportedFieldError(field, model_id, "a model id string")
    return model_id
