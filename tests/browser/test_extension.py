"""The example Chrome extension (web/extension/, packed by ``build.py extension``) in Chromium: loaded unpacked
into a persistent profile, its popup chats through the engine in the extension's service worker; without
'wasm-unsafe-eval' in its CSP the popup gets an error saying so instead of waiting forever.

Headless Chromium runs extensions in the new headless mode, which Chromium's ``--headless`` is since version 132.
Playwright passes ``--disable-extensions`` by default; it is left out here.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 900_000  # SwiftShader: tens of seconds per model load and prefill, seconds per token


@pytest.fixture(scope="module")
def extension() -> Path:
    sys.path.insert(0, str(ROOT))
    import build

    return build.build_extension(ROOT / ".cache" / "test-extension")


def open_with_extension(playwright_instance, profile: Path, extension: Path):
    args = [*CHROMIUM_ARGS, f"--disable-extensions-except={extension}", f"--load-extension={extension}"]
    ctx = playwright_instance.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=args,
        ignore_default_args=["--disable-extensions"],
    )
    ctx.set_default_timeout(TIMEOUT_MS)
    worker = ctx.service_workers[0] if ctx.service_workers else ctx.wait_for_event("serviceworker")
    assert worker.url.startswith("chrome-extension://") and worker.url.endswith("/background.js"), worker.url
    return ctx, worker.url.split("/")[2]


def run_popup(ctx, extension_id: str, query: str) -> tuple[str | None, str, list[str]]:
    """Open the popup page with ``query``; return (its error or None, its answer text, the console)."""
    page = ctx.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.goto(f"chrome-extension://{extension_id}/popup.html{query}")
    page.wait_for_selector("body[data-done], body[data-error]", timeout=TIMEOUT_MS)
    return page.get_attribute("body", "data-error"), page.inner_text("#out"), console


def test_the_popup_chats_through_the_extensions_service_worker(playwright_instance, tmp_path, extension):
    ctx, extension_id = open_with_extension(playwright_instance, tmp_path / "profile", extension)
    try:
        error, answer, console = run_popup(ctx, extension_id, "?q=Hi&max_tokens=2")
        assert error is None, (error, console[-20:])
        assert answer.strip()
        # a second popup shares the loaded model: its reload is skipped
        page = ctx.new_page()
        page.goto(f"chrome-extension://{extension_id}/popup.html")
        # a locator, not wait_for_function: Playwright >= 1.65 evaluates a predicate string with eval, which the
        # extension page's CSP (no 'unsafe-eval') refuses
        expect(page.locator("#status")).to_have_text(re.compile(r"^Ready"), timeout=120_000)
        assert "already loaded" in page.evaluate("() => window.progress.at(-1).text")
        # the browser stops the extension's worker: the port disconnects, and the next request reconnects, which
        # starts the worker again and reloads the model before answering
        cdp = ctx.new_cdp_session(page)
        cdp.send("ServiceWorker.enable")
        page.evaluate("() => { window.progress.length = 0; }")
        cdp.send("ServiceWorker.stopAllWorkers")
        out = page.evaluate(
            """async () => {
                const reply = await window.engine.chat.completions.create(
                    { messages: [{ role: "user", content: "Hi" }], max_tokens: 1 });
                return { reply, progress: window.progress.map((r) => r.text) };
            }"""
        )
        assert out["reply"]["choices"][0]["finish_reason"] == "length"
        assert any("Finish loading" in t and "already loaded" not in t for t in out["progress"]), out[
            "progress"
        ]
    finally:
        ctx.close()


def test_an_extension_without_wasm_unsafe_eval_fails_loudly(playwright_instance, tmp_path, extension):
    blocked = tmp_path / "blocked-extension"
    shutil.copytree(extension, blocked, ignore=shutil.ignore_patterns("models"))
    manifest = json.loads((blocked / "manifest.json").read_text())
    del manifest["content_security_policy"]  # MV3's default CSP: no 'wasm-unsafe-eval'
    (blocked / "manifest.json").write_text(json.dumps(manifest))
    ctx, extension_id = open_with_extension(playwright_instance, tmp_path / "profile", blocked)
    try:
        error, _, console = run_popup(ctx, extension_id, "?q=Hi&max_tokens=1")
        assert error is not None and "WebAssembly is blocked" in error and "wasm-unsafe-eval" in error, (
            error,
            console[-20:],
        )
    finally:
        ctx.close()
