"""Fixtures for browser tests: dist/ built once, served on 127.0.0.1, and headless Chromium (Playwright) with WebGPU.

WebGPU in headless Chromium without a GPU runs on SwiftShader (a CPU rasterizer: subgroups yes, shader-f16 no), so
these tests keep generation to a few tokens. A test talks to the real worker bootstrap (web/worker.js) with a test
handler (webllm_testkit.py, installed as a second wheel) that runs Python sent by the test inside the worker::

    worker = open_worker(page)
    assert worker.run("1 + 1") == 2
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("WEBLLM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TEST_PAGE = "__test__.html"
TESTKIT = Path(__file__).with_name("webllm_testkit.py")

# The page every test opens: it starts the worker and matches replies to requests by uuid.
PAGE_HTML = """<!doctype html><meta charset="utf-8"><title>webllm_py test</title>
<script type="module">
let next = 0;
const waiting = new Map();
window.events = [];
window.startWorker = (query) => {
  const worker = new Worker(new URL("./worker.js" + query, location.href), { type: "module" });
  worker.onerror = (e) => window.events.push({ kind: "error", content: String(e.message) });
  worker.onmessage = (e) => {
    const msg = e.data;
    if (msg.kind === "event") { window.events.push(msg); return; }
    const w = waiting.get(msg.uuid);
    if (w) { waiting.delete(msg.uuid); w(msg); } else window.events.push(msg);
  };
  window.worker = worker;
};
window.call = (msg) => new Promise((resolve) => {
  const uuid = "t" + next++;
  waiting.set(uuid, resolve);
  window.worker.postMessage({ ...msg, uuid });
});
</script>"""


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


def _build_testkit_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel holding webllm_testkit.py (micropip wants a real wheel, dist-info and all)."""
    sys.path.insert(0, str(ROOT))
    import build

    return build.write_wheel(
        folder,
        "webllm_testkit",
        "0.0.0",
        {"webllm_testkit.py": TESTKIT.read_bytes()},
        "Metadata-Version: 2.1\nName: webllm_testkit\nVersion: 0.0.0\n",
    )


def prepare_test_dist(out: Path) -> Path:
    """Add the testkit wheel and test-boot.json (the demo's boot config with the testkit handler) to a dist/."""
    boot = json.loads((out / "webllm_py.json").read_text())
    test_wheels = out / "test-wheels"
    shutil.rmtree(test_wheels, ignore_errors=True)
    test_wheels.mkdir()
    kit = _build_testkit_wheel(test_wheels)
    test_boot = {**boot, "wheels": [*boot["wheels"], f"test-wheels/{kit.name}"], "handler": "webllm_testkit"}
    (out / "test-boot.json").write_text(json.dumps(test_boot, indent=2))
    return out


# The tests' own dist (a deployable dist/ should not carry the testkit): what `build.py demo --no-serve` builds.
TEST_DIST = ROOT / ".cache" / "test-dist"


@pytest.fixture(scope="session")
def dist() -> Path:
    """The demo site as ``python3 build.py demo --no-serve`` builds it, plus the testkit wheel and a test boot
    config (in .cache/test-dist)."""
    sys.path.insert(0, str(ROOT))
    import build

    return prepare_test_dist(build.build_demo(TEST_DIST))


class Server:
    def __init__(self, directory: Path):
        sys.path.insert(0, str(ROOT))
        import build

        self.requests: Counter[str] = Counter()  # path -> count of GET requests
        self.lock = threading.Lock()

        def on_request(method: str, path: str, status: int) -> None:
            with self.lock:
                self.requests[path] += 1

        self.httpd = build.make_server(directory, 0, on_request)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def count(self, suffix: str) -> int:
        with self.lock:
            return sum(n for p, n in self.requests.items() if p.endswith(suffix))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def server(dist):
    s = Server(dist)
    yield s
    s.close()


# Package scope, not session: Playwright's sync API keeps an asyncio loop running on the main thread while it is
# open, and every later test that calls asyncio.run() (e2e, kernels, unit run after browser/ in one pytest) would
# fail with "asyncio.run() cannot be called from a running event loop". It closes when tests/browser/ is done.
@pytest.fixture(scope="package")
def playwright_instance():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"browser tests need Chromium at {CHROMIUM} (`python3 build.py test` installs it)")
    with sync_playwright() as p:
        yield p


def launch(playwright_instance, user_data_dir: Path, extra_args=(), webgpu: bool = True):
    args = [a for a in CHROMIUM_ARGS if webgpu or a != "--enable-unsafe-webgpu"] + list(extra_args)
    # A persistent profile: the default context behaves like incognito, whose storage quota is too small for models.
    return playwright_instance.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=CHROMIUM, headless=True, args=args
    )


@pytest.fixture(scope="package")
def browser_context(playwright_instance, tmp_path_factory):
    ctx = launch(playwright_instance, tmp_path_factory.mktemp("chromium-profile"))
    yield ctx
    ctx.close()


class WorkerSession:
    """A page with web/worker.js running the testkit handler; ``run(code)`` executes Python in the worker."""

    def __init__(self, page, query: str):
        self.page = page
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.evaluate("q => window.startWorker(q)", query)

    def call(self, msg: dict, timeout_s: float = 120) -> dict:
        self.page.set_default_timeout(timeout_s * 1000)
        return self.page.evaluate("m => window.call(m)", msg)

    def run(self, code: str, timeout_s: float = 120):
        reply = self.call({"kind": "exec", "code": code}, timeout_s)
        if reply["kind"] != "return":
            content = reply.get("content", {})
            raise AssertionError(
                f"worker raised {content.get('name')}: {content.get('message')}\n{content.get('traceback', '')}"
                f"\nconsole:\n" + "\n".join(self.console[-20:])
            )
        return reply.get("content")

    def events(self) -> list[dict]:
        return self.page.evaluate("() => window.events")


def _route_test_page(page):
    page.route(
        f"**/{TEST_PAGE}", lambda route: route.fulfill(status=200, content_type="text/html", body=PAGE_HTML)
    )


@pytest.fixture
def open_worker(server, browser_context):
    """``open_worker(query="?config=test-boot.json")``: a new page (a new visit) with a booted worker."""
    pages = []

    def make(
        query: str = "?config=test-boot.json", context=None, boot_timeout_s: float = 180
    ) -> WorkerSession:
        page = (context or browser_context).new_page()
        pages.append(page)
        _route_test_page(page)
        page.goto(server.url + TEST_PAGE)
        session = WorkerSession(page, query)
        reply = session.call({"kind": "echo", "ping": 1}, boot_timeout_s)
        assert reply["kind"] == "echo", f"worker did not boot: {reply}\n" + "\n".join(session.console)
        return session

    yield make
    for p in pages:
        p.close()
