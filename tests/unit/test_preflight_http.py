"""A model too large for the GPU fails before its download, from its header alone, naming both numbers.

A Llama-3.1-8B-shaped Q4_K_M GGUF (bench/synth_gguf.py's header: 128,256-token vocabulary, 4.6 GiB of tensor data,
served as zeros past the header, nothing on disk) is offered by an HTTP server on 127.0.0.1 that counts what it
sends. MLCEngine.reload on an adapter that reports 4 GiB free raises ModelTooLargeError naming what the model needs
(weights + KV cache at the record's context window + activations) and the 4 GiB, after range requests that read the
header and at most one HEADER_STEP past it: no request for the whole file, nothing in the cache. With 12 GiB free
the same header passes and the download starts (the fake download below stops it at once). A binding the adapter
cannot give is refused by name and value.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from webllm_py.api.mlc_engine import MLCEngine
from webllm_py.config import AppConfig, ModelRecord
from webllm_py.errors import ModelDownloadError, ModelTooLargeError
from webllm_py.gpu.device import AdapterInfo, DeviceCaps
from webllm_py.model import download
from webllm_py.model.gguf import HEADER_STEP

SYNTH = Path(__file__).resolve().parents[2] / "bench" / "synth_gguf.py"
GIB = 1 << 30


def synth():
    spec = importlib.util.spec_from_file_location("synth_gguf", SYNTH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server():
    s = synth()
    vocab = s.SHAPES["llama-3.1-8b"][7]
    tokenizer = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": [f"tok{i}" for i in range(vocab)],
        "tokenizer.ggml.token_type": [1] * vocab,
        "tokenizer.ggml.merges": ["t o", "o k"],
    }
    header, data_bytes = s.header_bytes(
        s.model_metadata("llama-3.1-8b", "Q4_K_M", tokenizer), s.tensor_table("llama-3.1-8b", "Q4_K_M")
    )
    size = len(header) + data_bytes
    log = SimpleNamespace(sent=0, past_header=0, whole=0, ranges=[], ignore_range=False)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
            if match is None or log.ignore_range:  # the download itself, or a server without ranges
                log.whole += 1
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                return  # the client sees a truncated body
            a, b = int(match[1]), min(int(match[2]), size - 1)
            body = header[a : b + 1] + bytes(max(0, b + 1 - max(a, len(header))))
            log.ranges.append((a, b))
            log.sent += len(body)
            log.past_header += max(0, b + 1 - max(a, len(header)))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{size}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(
        url=f"http://127.0.0.1:{httpd.server_address[1]}/Llama-3.1-8B-Q4_K_M.gguf",
        log=log,
        header=len(header),
        size=size,
    )
    httpd.shutdown()


def fake_device(free: int):
    caps = DeviceCaps(
        has_f16=True, has_subgroups=True, max_storage_buffer_binding_size=2 * GIB - 4, max_buffer_size=4 * GIB,
        max_compute_workgroup_storage_size=32768, max_compute_invocations_per_workgroup=1024,
        max_storage_buffers_per_shader_stage=10, min_storage_buffer_offset_alignment=256,
        min_uniform_buffer_offset_alignment=256, max_compute_workgroups_per_dimension=65535,
        memory_bytes=free, memory_source="test adapter",
    )  # fmt: skip
    return SimpleNamespace(caps=caps, info=AdapterInfo(vendor="test", device="4 GiB GPU"), allocated_bytes=0)


def reload(server, tmp_path, free: int) -> MLCEngine:
    record = ModelRecord("Llama-3.1-8B-Q4_K_M", server.url, context_window_size=4096)
    config = AppConfig(model_list=[record], cache_dir=str(tmp_path / "cache"))
    mlc = MLCEngine(app_config=config, device=fake_device(free))
    asyncio.run(mlc.reload(record.model_id))
    return mlc


def test_too_large_fails_before_the_download(server, tmp_path):
    log = server.log
    log.sent = log.past_header = log.whole = 0
    with pytest.raises(ModelTooLargeError) as info:
        reload(server, tmp_path, 4 * GIB)
    err = info.value
    msg = str(err)
    assert err.available_bytes == 4 * GIB and err.needed_bytes > err.available_bytes
    # both numbers, in GiB and in bytes, and what the need is made of
    assert f"{err.needed_bytes} bytes" in msg and f"{4 * GIB} bytes" in msg and "4.00 GiB" in msg
    needed_gib = float(re.search(r"needs ([\d.]+) GiB", msg)[1])
    assert 5.0 < needed_gib < 5.6, (
        msg
    )  # 4.7 GiB of weights + 512 MiB of KV cache at 4096 positions + activations
    assert "KV cache 512.0 MiB at context_window_size 4096" in msg
    assert "the weights alone" in msg  # no context window would fit: the weights exceed 4 GiB by themselves
    # Only the header and at most one step past it came over the wire; no download began.
    assert log.whole == 0
    assert server.header <= log.sent <= server.header + HEADER_STEP
    assert log.past_header <= HEADER_STEP
    assert not os.path.exists(tmp_path / "cache") or not any((tmp_path / "cache").rglob("*.gguf*"))


def test_fits_then_downloads(server, tmp_path, monkeypatch):
    server.log.whole = 0

    def no_download(url, dest, **_kw):
        raise ModelDownloadError("stopped by the test")

    monkeypatch.setattr(download, "download_file", no_download)
    with pytest.raises(ModelDownloadError, match="stopped by the test"):
        reload(server, tmp_path, 12 * GIB)


def test_context_window_hint(server, tmp_path):
    """Weights fit, the KV cache of a long context does not: the error says how far to lower it."""
    record = ModelRecord("Llama-3.1-8B-Q4_K_M", server.url, context_window_size=131072)
    mlc = MLCEngine(
        app_config=AppConfig(model_list=[record], cache_dir=str(tmp_path)), device=fake_device(8 * GIB)
    )
    with pytest.raises(ModelTooLargeError, match=r"lower context_window_size to at most (\d+)") as info:
        asyncio.run(mlc.reload(record.model_id))
    fits = int(re.search(r"at most (\d+)", str(info.value))[1])
    assert 8192 < fits < 131072


def test_server_without_ranges(server, tmp_path):
    """A server that answers a range request with the whole file: no header first (the check waits for the file),
    and not a byte of its body is read."""
    server.log.ignore_range = True
    try:
        record = ModelRecord("Llama-3.1-8B-Q4_K_M", server.url)
        assert asyncio.run(download.read_header(record, AppConfig(cache_dir=str(tmp_path)))) is None
    finally:
        server.log.ignore_range = False
