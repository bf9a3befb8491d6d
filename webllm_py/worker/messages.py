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
import traceback
from collections.abc import Mapping
from typing import Any

from webllm_py import errors
from webllm_py.config import app_config_from_dict, app_config_to_dict  # noqa: F401 (the protocol's app config form)
from webllm_py.errors import (
    InvalidFieldTypeError,
    UnknownMessageKindError,
    UnsupportedFieldError,
    WebLLMError,
    WorkerError,
)

REQUEST_KINDS = frozenset(
    {
        "reload",
        "unload",
        "chatCompletionNonStreaming",
        "chatCompletionStreamInit",
        "completionNonStreaming",
        "completionStreamInit",
        "completionStreamNextChunk",
        "interruptGenerate",
        "resetChat",
        "getMessage",
        "runtimeStatsText",
        "forwardTokensAndSample",
        "getGPUVendor",
        "getMaxStorageBufferBindingSize",
        "setLogLevel",
        "setAppConfig",
        "getAppConfig",
        "hasModelInCache",
        "deleteModelInCache",
        "keepAlive",
    }
)
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


# ---- envelope ---------------------------------------------------------------------------------------------------


def make_message(kind: str, uuid: str, content: Any = None) -> dict[str, Any]:
    return {"kind": kind, "uuid": uuid, "content": content}


def parse_request(message: Any) -> tuple[str, str, Any]:
    """``(kind, uuid, content)`` of a request; ``UnknownMessageKindError`` for anything outside the protocol.

    The error carries ``uuid`` when the envelope had one, so the handler can still answer it."""
    uuid = message.get("uuid") if isinstance(message, Mapping) else None
    if not isinstance(uuid, str) or not uuid:
        err = UnknownMessageKindError(
            f"a worker message must be {{kind, uuid, content}}; got {message!r:.200}"
        )
        err.uuid = None
        raise err
    kind = message.get("kind")
    if kind not in REQUEST_KINDS:
        err = UnknownMessageKindError(
            f"unknown message kind {kind!r:.80}; the worker understands: {', '.join(sorted(REQUEST_KINDS))}"
        )
        err.uuid = uuid
        raise err
    try:
        content = plain(message.get("content"))
    except UnknownMessageKindError as err:
        err.uuid = uuid
        raise
    return kind, uuid, content


def plain(value: Any) -> Any:
    """``value`` as plain JSON data. A host's JS-to-Python conversion may leave stand-ins for JS ``null`` (Pyodide's
    ``to_py()`` gives ``jsnull``, which is falsy but not None): anything that is not JSON data and is falsy becomes
    None, so ``{"max_tokens": null}`` means "not given", as in OpenAI's API."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if not value:
        return None
    raise UnknownMessageKindError(f"a worker message must hold JSON data only; got {type(value).__name__}")


# ---- errors -----------------------------------------------------------------------------------------------------


def error_to_content(exc: BaseException) -> dict[str, Any]:
    """``{name, message, details}``: the class name, the message, and the error's JSON-able attributes (``field``,
    ``value``, ``allowed``...); for errors that are not ours, the worker-side traceback as ``details.stack``."""
    details: dict[str, Any] = {}
    for key, value in vars(exc).items():
        if key.startswith("_") or key == "name":
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        details[key] = value
    if not isinstance(exc, WebLLMError):
        # Not a failure we raise on purpose: most likely a bug, so the worker-side stack is worth carrying.
        details["stack"] = "".join(traceback.format_exception(exc))
    if isinstance(exc, WorkerError):
        name = exc.name  # a remote error passed on: keep its original name
        message = str(exc.args[0]) if exc.args else ""
        message = message.removeprefix(f"{name}: ")
    else:
        name = type(exc).__name__
        message = str(exc.args[0]) if len(exc.args) == 1 and isinstance(exc, KeyError) else str(exc)
    return {"name": name, "message": message, "details": details}


def error_from_content(content: Any) -> BaseException:
    """The exception a ``throw`` reply stands for: the class of that name from ``webllm_py.errors``, a Python
    built-in from a short list, else ``WorkerError`` keeping the name. Attributes from ``details`` are restored."""
    if not isinstance(content, Mapping):
        return WorkerError("", f"the worker threw {content!r:.200}")
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
