"""A local OpenAI-compatible endpoint (WebLLM has nothing like it): the one request-handling implementation of both
hosts that serve one.

- In the browser, the service worker's ``fetch`` listener (``web/sw.js``, through ``host/service_worker_entry.py``)
  hands requests under ``<scope>v1/`` to ``LocalEndpoint.handle``.
- On the desktop, ``webllm-py serve`` (``host/http_server.py``) hands it each HTTP request to ``/v1/...``.

Both give it the method, the route and the body, and send back what it answers; both serve a
``ServiceWorkerMLCEngineHandler`` (host-neutral: the desktop server runs one over its ``MLCEngine``), so queueing,
abandoned streams and errors behave the same in either host. An unmodified OpenAI client talks to it::

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

Each request is its own client of the shared handler (``service_worker.py``): it waits for another client's stream
instead of cutting it off, and a request whose reader goes away (the page aborts the fetch, the HTTP client
disconnects) ends its generation. ``model`` selects the model: one other than the loaded model is loaded first (as
a tab's request would); without ``model``, the loaded model answers.

Bodies are checked before anything else sees them, in this order: at most ``max_body_bytes`` (413), UTF-8 JSON
nested at most ``protocol.MAX_JSON_DEPTH`` deep without NaN (400), an object, then the whole request as
``protocol.py`` checks it (400; ``stream`` must be a boolean, so ``"stream": "false"`` is refused, not streamed).
Errors are OpenAI's ``{"error": {message, type, param, code}}`` with the status OpenAI uses; an error in the middle
of a stream is sent as a ``data: {"error": ...}`` event, and the stream ends.
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
from webllm_py.protocol import check_chat_completion_request, check_completion_request, loads_json

from .service_worker import ServiceWorkerMLCEngineHandler

JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
ROUTES = {
    "v1/chat/completions": ("POST", "chatCompletion"),
    "v1/completions": ("POST", "completion"),
    "v1/models": ("GET", None),
}
CHECKS = {"chatCompletion": check_chat_completion_request, "completion": check_completion_request}
MAX_BODY_BYTES = 16 << 20  # a 100,000-token prompt is under 1 MB of JSON
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
    "RequestTooLargeError": (413, "invalid_request_error", "request_too_large"),
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

    def __init__(self, handler: ServiceWorkerMLCEngineHandler, *, max_body_bytes: int = MAX_BODY_BYTES):
        self.handler = handler
        self.max_body_bytes = max_body_bytes

    async def handle(self, method: str, route: str, body: str | bytes | None = None) -> HTTPResponse:
        """Answer one HTTP request; ``route`` is the path under the endpoint's root (``v1/models``), ``body`` its
        text or bytes (None: none). Never raises: every failure is an OpenAI-shaped answer."""
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
            request = self.request_body(body)
            stream = CHECKS[api](request).config.stream  # the whole request, before any engine work
            return await self.generate(api, request, stream)
        except Exception as exc:  # every failure is an OpenAI-shaped answer, never a hung fetch
            return error_response(exc)

    def request_body(self, body: str | bytes | None) -> dict[str, Any]:
        """The JSON object a POST body holds, or the typed error (413 / 400) that says why not."""
        size = len(body) if isinstance(body, bytes) else len((body or "").encode("utf-8", "surrogatepass"))
        if size > self.max_body_bytes:
            raise errors.RequestTooLargeError("body", size, self.max_body_bytes)
        if isinstance(body, bytes):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError as e:
                raise errors.InvalidJSONError("body", f"not UTF-8 text (byte {e.start})") from None
        value = loads_json(body or "", "body")
        if not isinstance(value, dict):
            raise errors.InvalidJSONError("body", "must be a JSON object of request fields")
        return value

    def models(self) -> dict[str, Any]:
        created = int(time.time())
        data = [
            {"id": r.model_id, "object": "model", "created": created, "owned_by": "webllm_py"}
            for r in self.handler.engine.app_config.model_list
        ]
        return {"object": "list", "data": data}

    async def generate(self, api: str, request: dict[str, Any], stream: bool) -> HTTPResponse:
        client = (
            f"fetch-{next(_client_ids)}"  # each fetch is its own client: fetches queue, never cut each other
        )
        model = request.get("model")
        # The loaded model answers a request naming it, whatever options a tab loaded it with; another model is
        # loaded first (reloadIfUnmatched), as for a tab.
        content: dict[str, Any] = {"request": request}
        if isinstance(model, str) and model and model != self.handler.engine.model_id:
            content["modelId"] = [model]
        if not stream:
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


def _problem(status: int, message: str, code: str) -> HTTPResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return HTTPResponse(status, body=json.dumps(body))
