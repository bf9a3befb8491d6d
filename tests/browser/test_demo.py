"""The demo page (web/index.html) in Chromium, driven as a user would: load, chat, stop, new chat, errors.

One page for the module (loading the model on SwiftShader takes tens of seconds; a token takes seconds), and every
request asks for a few tokens. A second browser without WebGPU checks that the page says so, with what to do.
"""

from __future__ import annotations

import pytest

from .conftest import launch

MODEL = "SmolLM2-135M-Instruct-Q4_1"
TIMEOUT_MS = 900_000


def wait_state(page, *states: str) -> str:
    page.wait_for_function(
        "states => states.includes(document.body.dataset.state)", arg=list(states), timeout=TIMEOUT_MS
    )
    return page.evaluate("document.body.dataset.state")


def settings(page, *, max_tokens: str, temperature: str) -> None:
    if not page.is_visible("#max-tokens"):
        page.click("details summary")
    page.fill("#max-tokens", max_tokens)
    page.fill("#temperature", temperature)


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.click("#send")


@pytest.fixture(scope="module")
def demo(server, browser_context):
    page = browser_context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.goto(server.url + f"index.html?model={MODEL}")
    state = wait_state(page, "ready", "error")
    assert state == "ready", page.inner_text("#error") + "\n" + "\n".join(console[-30:])
    yield page
    page.close()


def test_loads_the_model_with_progress(demo):
    progress = demo.evaluate("() => window.webllmDemo.progress")
    assert progress and progress[-1]["progress"] == 1.0 and "Finish loading" in progress[-1]["text"]
    assert all(0.0 <= r["progress"] <= 1.0 for r in progress)
    assert demo.is_hidden("#progress-row") and demo.is_hidden("#error")
    assert demo.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [MODEL]
    assert demo.is_enabled("#send") and demo.is_disabled("#stop")


def test_chat_streams_a_reply_with_stats(demo):
    settings(demo, max_tokens="2", temperature="0")
    send(demo, "Hi")
    assert wait_state(demo, "generating", "ready") in ("generating", "ready")
    wait_state(demo, "ready")
    replies = demo.locator(".msg.assistant")
    assert replies.count() == 1 and replies.first.inner_text().strip()
    assert replies.first.get_attribute("data-finish") == "length"
    for stat in ("#stat-prefill", "#stat-decode", "#stat-ttft"):
        float(demo.inner_text(stat))  # a number, not the "–" placeholder
    assert demo.inner_text("#stat-tokens") == "2"
    assert demo.evaluate("() => window.webllmDemo.messages.map(m => m.role)") == ["user", "assistant"]


def test_bad_setting_shows_the_typed_error(demo):
    settings(demo, max_tokens="2", temperature="5")
    send(demo, "Hi")
    wait_state(demo, "ready")
    assert demo.is_visible("#error")
    assert demo.get_attribute("#error", "data-name") == "InvalidRangeError"
    assert demo.inner_text("#error-name") == "InvalidRangeError"
    assert "`temperature` must be in [0, 2]" in demo.inner_text("#error-message")
    assert demo.inner_text("#error-help")  # what to do about it
    # the failed turn was taken back: the conversation still alternates user/assistant
    assert demo.evaluate("() => window.webllmDemo.messages.map(m => m.role)") == ["user", "assistant"]
    assert demo.input_value("#prompt") == "Hi"


def test_stop_then_new_chat(demo):
    settings(demo, max_tokens="40", temperature="0")
    send(demo, "Count from one to twenty.")
    demo.wait_for_function(
        "() => (document.querySelector('.msg.assistant:last-child')?.textContent ?? '').length > 0",
        timeout=TIMEOUT_MS,
    )
    demo.click("#stop")
    wait_state(demo, "ready")
    last = demo.locator(".msg.assistant").last
    assert last.get_attribute("data-finish") == "abort"
    assert int(demo.inner_text("#stat-tokens")) < 40
    demo.click("#new-chat")
    demo.wait_for_function("() => document.querySelectorAll('#log .msg').length === 0")
    assert demo.evaluate("() => window.webllmDemo.messages.length") == 0
    assert demo.inner_text("#stat-tokens") == "–"


def test_without_webgpu_the_page_says_what_to_do(playwright_instance, server, tmp_path):
    context = launch(playwright_instance, tmp_path / "profile", webgpu=False)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.url + "index.html")
        page.wait_for_selector("#error[data-name='WebGPUNotAvailableError']", timeout=TIMEOUT_MS)
        assert "WebGPU" in page.inner_text("#error-help") and "chrome://" in page.inner_text("#error-help")
        # Loading anyway fails in the worker with the same typed error, and the page stays usable.
        wait_state(page, "idle", "error")
        page.evaluate("document.getElementById('error').hidden = true")
        page.click("#load")
        assert wait_state(page, "error") == "error"
        assert page.get_attribute("#error", "data-name") == "WebGPUNotAvailableError"
    finally:
        context.close()
