"""A local OpenAI-compatible endpoint, answered by the engine in the service worker (WebLLM has nothing like it).

The service worker's ``fetch`` listener (``web/sw.js``, through ``host/service_worker_entry.py``) hands requests
under ``<scope>v1/`` to ``LocalEndpoint.handle``, so an unmodified OpenAI client in the page talks to the local
engine::

    const r = await fetch("v1/chat/completions", { method: "POST", body: JSON.stringify({ model, messages }) });
    const openai = new OpenAI({ baseURL: new URL("v1", location.href).href, apiKey: "unused",
                                dangerouslyAllowBrowser: true });

=======  ======================  ===========================================================================
method   path (under the scope)  answer
=======  ======================  ===========================================================================
POST     v1/chat/completions     a ChatCompletion; with ``"stream": true`` Server-Sent Events, one
                                 ``data: <chunk JSON>`` event per chunk, then ``data: [DONE]``
POST     v1/completions          the same for text completion (a Completion, or its chunks as SSE)
GET      v1/models               ``{"object": "list", "data": [{"id", "object": "model", ...}]}``, the app
                                 config's models
=======  ======================  ===========================================================================

Each fetch is its own client of the shared handler (``service_worker.py``): it waits for another client's stream
instead of cutting it off, and a fetch whose reader goes away (the page aborts it, the tab closes) ends its
generation. ``model`` selects the model: one other than the loaded model is loaded first (as a tab's request
would); without ``model``, the loaded model answers. Errors are OpenAI's ``{"error": {message, type, param,
code}}`` with the status OpenAI uses; an error in the middle of a stream is sent as a ``data: {"error": ...}``
event, and the stream ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from webllm_py import errors
from webllm_py.api import sse
from webllm_py.api.sse import DONE

from .service_worker import ServiceWorkerMLCEngineHandler

JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
ROUTES = {
    "v1/chat/completions": ("POST", "chatCompletion"),
    "v1/completions": ("POST", "completion"),
    "v1/models": ("GET", None),
}
_client_ids = count(1)


@dataclass
class HTTPResponse:
    """What the fetch listener turns into a ``Response``: ``body`` (text), or ``events`` (SSE text, streamed)."""

    status: int
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))
    body: str = ""
    events: AsyncIterator[str] | None = None


def sse_event(data: Any) -> str:
    """One Server-Sent Event carrying ``data`` as JSON (or the literal ``[DONE]``), framed as ``api.sse`` does."""
    return (DONE if data == "[DONE]" else sse.sse_event(data)).decode()


# error class name -> (HTTP status, OpenAI error type, OpenAI error code)
_STATUS = {
    "ModelNotFoundError": (404, "invalid_request_error", "model_not_found"),
    "SpecifiedModelNotFoundError": (404, "invalid_request_error", "model_not_found"),
    "ContextWindowSizeExceededError": (400, "invalid_request_error", "context_length_exceeded"),
    "EngineNotLoadedError": (400, "invalid_request_error", "model_not_loaded"),
    "UnsupportedEndpointError": (501, "invalid_request_error", "not_implemented"),
}


def _name(exc: BaseException) -> str:
    """The class name the error crossed the worker boundary with (a WorkerError keeps the remote one)."""
    return str(getattr(exc, "name", "")) if isinstance(exc, errors.WorkerError) else type(exc).__name__


def error_status(exc: BaseException) -> tuple[int, str, str | None]:
    """(HTTP status, OpenAI error type, OpenAI error code) for an error."""
    if _name(exc) in _STATUS:
        return _STATUS[_name(exc)]
    if isinstance(exc, errors.InvalidRequestError | errors.UnknownChatTemplateError):
        return 400, "invalid_request_error", None
    return 500, "server_error", None


def error_body(exc: BaseException) -> dict[str, Any]:
    """OpenAI's error object; ``code`` is OpenAI's code where one fits, else our error class name."""
    message = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    _, kind, code = error_status(exc)
    param = getattr(exc, "field", None)
    return {"error": {"message": message, "type": kind, "param": param, "code": code or _name(exc)}}


def error_response(exc: BaseException) -> HTTPResponse:
    return HTTPResponse(error_status(exc)[0], body=json.dumps(error_body(exc)))


class LocalEndpoint:
    """The routes above over a ``ServiceWorkerMLCEngineHandler``."""

    def __init__(self, handler: ServiceWorkerMLCEngineHandler):
        self.handler = handler

    async def handle(self, method: str, route: str, body: str | None = None) -> HTTPResponse:
        """Answer one HTTP request; ``route`` is the path under the service worker's scope (``v1/models``)."""
        route = route.strip("/")
        if route not in ROUTES:
            return _problem(
                404, f"no route {route!r}: this endpoint answers {', '.join(ROUTES)}", "not_found"
            )
        allowed, api = ROUTES[route]
        if method == "OPTIONS":
            return HTTPResponse(204, {"Allow": f"{allowed}, OPTIONS"})
        if method != allowed:
            return _problem(405, f"{route} takes {allowed}, not {method}", "method_not_allowed")
        try:
            if api is None:
                return HTTPResponse(200, body=json.dumps(self.models()))
            request = _json_object(body)
            return await self.generate(api, request)
        except Exception as exc:  # every failure is an OpenAI-shaped answer, never a hung fetch
            return error_response(exc)

    def models(self) -> dict[str, Any]:
        created = int(time.time())
        data = [
            {"id": r.model_id, "object": "model", "created": created, "owned_by": "webllm_py"}
            for r in self.handler.engine.app_config.model_list
        ]
        return {"object": "list", "data": data}

    async def generate(self, api: str, request: dict[str, Any]) -> HTTPResponse:
        client = (
            f"fetch-{next(_client_ids)}"  # each fetch is its own client: fetches queue, never cut each other
        )
        model = request.get("model")
        # The loaded model answers a request naming it, whatever options a tab loaded it with; another model is
        # loaded first (reloadIfUnmatched), as for a tab.
        content: dict[str, Any] = {"request": request}
        if isinstance(model, str) and model and model != self.handler.engine.model_id:
            content["modelId"] = [model]
        if not request.get("stream"):
            try:
                value = await self.handler.request(client, f"{api}NonStreaming", content)
            finally:
                self.handler.forget_client(client)
            return HTTPResponse(200, body=json.dumps(value))
        try:
            stream_id = client + "-stream"
            await self.handler.request(client, f"{api}StreamInit", content, uuid=stream_id)
        except BaseException:
            self.handler.forget_client(client)
            raise
        return HTTPResponse(200, dict(SSE_HEADERS), events=self._events(client, stream_id))

    async def _events(self, client: str, stream_id: str) -> AsyncIterator[str]:
        """The stream as SSE text; closing it early (the reader went away) ends the generation."""
        done = False
        try:
            while True:
                try:
                    chunk = await self.handler.request(
                        client, "completionStreamNextChunk", {"streamId": stream_id}
                    )
                except Exception as exc:
                    done = True
                    yield sse_event(error_body(exc))
                    return
                if chunk is None:
                    done = True
                    yield sse_event("[DONE]")
                    return
                yield sse_event(chunk)
        finally:
            if not done:
                self.handler.client_gone(client)  # ends its stream (interrupted: finish_reason "abort")
            self.handler.forget_client(client)


class EventStream:
    """A streamed answer's SSE text for a host that pulls it one event at a time (sw.js reads it into a
    ``ReadableStream``). ``close()`` (the page stopped reading) may come while a ``next()`` is running, and an
    async generator cannot be closed then: the close waits for that ``next()`` to end, and ends the stream there."""

    def __init__(self, events: AsyncIterator[str]):
        self._events = events
        self._running = False
        self._closed = False

    async def next(self) -> str | None:
        """The next event's text; None once the stream ended or was closed."""
        if self._closed:
            return None
        self._running = True
        try:
            return await anext(self._events)
        except StopAsyncIteration:
            return None
        finally:
            self._running = False
            if self._closed:
                await self._events.aclose()  # type: ignore[attr-defined]

    async def close(self) -> None:
        self._closed = True
        if not self._running:
            await self._events.aclose()  # type: ignore[attr-defined]


def _json_object(body: str | None) -> dict[str, Any]:
    try:
        value = json.loads(body or "")
    except ValueError as e:
        raise errors.InvalidRequestError(f"the request body is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise errors.InvalidRequestError("the request body must be a JSON object")
    return value


def _problem(status: int, message: str, code: str) -> HTTPResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return HTTPResponse(status, body=json.dumps(body))
