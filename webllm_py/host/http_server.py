"""The desktop host of the local OpenAI endpoint: ``webllm-py serve`` (stdlib asyncio, no web framework).

This file only speaks HTTP/1.1: it reads a request (request line, headers, a ``Content-Length`` body) and writes
back what ``worker/local_endpoint.py`` answers, the same ``LocalEndpoint`` the service worker serves, over the same
host-neutral ``ServiceWorkerMLCEngineHandler`` (here around a desktop ``MLCEngine``). So routes, validation, error
bodies, queueing and streams behave exactly as in the browser::

    server = OpenAIServer(engine)                 # an MLCEngine with a model loaded
    host, port = await server.start("127.0.0.1", 8000)
    # openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="unused")

Each HTTP request is one client of the handler. A streamed answer (``text/event-stream``) is sent with
``Connection: close`` and ends with the connection; while it streams, the connection is watched, and a client that
disconnects (closes the socket, or a write fails) ends its generation at once: the model is free for the next
request. Other answers carry a ``Content-Length`` and keep the connection open for the next request.

Malformed HTTP gets a 400 (or 413 / 431 / 501) in OpenAI's error shape and the connection is closed; a client
that sends nothing for ``idle_timeout_s`` is disconnected.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from ..errors import RequestTooLargeError
from ..worker.local_endpoint import MAX_BODY_BYTES, EventStream, HTTPResponse, LocalEndpoint, error_response
from ..worker.service_worker import ServiceWorkerMLCEngineHandler

log = logging.getLogger("webllm_py")

MAX_HEADER_BYTES = 64 << 10  # request line and headers together
REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}


class _BadHTTP(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class OpenAIServer:
    """``LocalEndpoint`` over HTTP/1.1 on a TCP port, for an ``MLCEngine`` (or anything the handler serves)."""

    def __init__(
        self,
        engine: Any,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        idle_timeout_s: float = 300.0,
    ):
        # One handler for every HTTP client, as the service worker has for its tabs; nothing to post to (each
        # request is answered through LocalEndpoint), and a client is alive until its connection goes.
        self.handler = ServiceWorkerMLCEngineHandler(engine, lambda client, message: None)
        self.endpoint = LocalEndpoint(self.handler, max_body_bytes=max_body_bytes)
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 8000) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0: any free one); returns the address actually bound."""
        self._server = await asyncio.start_server(self._connection, host, port, limit=MAX_HEADER_BYTES)
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    async def serve_forever(self) -> None:
        assert self._server is not None, "call start() first"
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # ---- one connection -------------------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            keep_open = True
            while keep_open:
                try:
                    request = await asyncio.wait_for(self._read_request(reader), self.idle_timeout_s)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return  # idle, or the client went away between requests
                except _BadHTTP as e:
                    await self._send(writer, _problem(e.status, str(e)), close=True)
                    return
                except RequestTooLargeError as e:  # refused unread: the answer the endpoint gives
                    await self._send(writer, error_response(e), close=True)
                    await _discard(reader, e.size)  # so a client still sending reads the answer, not a reset
                    return
                if request is None:
                    return  # the client closed the connection
                method, route, body, keep_open = request
                response = await self.endpoint.handle(method, route, body)
                if response.events is not None:
                    await self._stream(reader, writer, response)
                    return
                await self._send(writer, response, close=not keep_open)
        except ConnectionError:
            pass  # the client went away while we were answering
        except asyncio.CancelledError:
            pass  # the server is closing (a cancelled connection task would be logged by asyncio as an error)
        except Exception:  # a bug here must not take the server down, only this connection
            log.exception("webllm-py serve: connection failed")
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes | None, bool] | None:
        """(method, route under the root, body, keep the connection open), None at a clean end of the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if not e.partial.strip():
                return None
            raise _BadHTTP(400, "the request ended before its headers did") from None
        except asyncio.LimitOverrunError:
            raise _BadHTTP(431, f"request line and headers over {MAX_HEADER_BYTES} bytes") from None
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise _BadHTTP(400, "a malformed request line (expected: METHOD /path HTTP/1.1)") from None
        if not version.startswith("HTTP/1."):
            raise _BadHTTP(400, f"unsupported protocol {version[:20]!r}: this server speaks HTTP/1.1")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise _BadHTTP(400, f"a malformed header line {line[:40]!r}")
                headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _BadHTTP(501, "chunked request bodies are not supported: send a Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit() or len(length_text) > 15:
            raise _BadHTTP(400, f"Content-Length must be a number of bytes; got {length_text[:20]!r}")
        length = int(length_text)
        if length > self.max_body_bytes:
            raise RequestTooLargeError("body", length, self.max_body_bytes)
        body = await reader.readexactly(length) if length else None
        keep_open = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        route = urlsplit(target).path.lstrip("/")
        return method, route, body, keep_open

    async def _send(self, writer: asyncio.StreamWriter, response: HTTPResponse, *, close: bool) -> None:
        body = response.body.encode()
        headers = {**response.headers, "Content-Length": str(len(body))}
        if close:
            headers["Connection"] = "close"
        writer.write(_head(response.status, headers) + body)
        await writer.drain()

    async def _stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: HTTPResponse
    ) -> None:
        """Send the SSE events as they come; end the stream (and so the generation) if the client goes away."""
        assert response.events is not None
        events = EventStream(response.events)
        gone = asyncio.ensure_future(
            reader.read(1)
        )  # the client sends nothing more: any result means it left
        try:
            writer.write(_head(response.status, {**response.headers, "Connection": "close"}))
            await writer.drain()
            while True:
                pull = asyncio.ensure_future(events.next())
                await asyncio.wait({pull, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not pull.done():  # the client left while the next event was being made
                    await events.close()  # ends the stream once that event is out, which interrupts it
                    await pull
                    return
                text = pull.result()
                if text is None:
                    return
                writer.write(text.encode())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            gone.cancel()
            await events.close()  # the reader went away, or the stream ended: either way nothing more is read


async def _discard(reader: asyncio.StreamReader, n: int, timeout_s: float = 5.0) -> None:
    """Read and drop up to ``n`` bytes (a refused body), for at most ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while n > 0 and (piece := await reader.read(min(n, 1 << 16))):
                n -= len(piece)
    except (TimeoutError, ConnectionError):
        pass


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _problem(status: int, message: str) -> HTTPResponse:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": "bad_http_request"}
    return HTTPResponse(status, body=json.dumps({"error": error}))
