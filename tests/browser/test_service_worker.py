"""The engine in a service worker (web/sw.js) in Chromium: shared by tabs, answering the local OpenAI endpoint,
restarted after the browser stops it.

The tests run in order on one browser profile of their own (a service worker registered at the dist root would
otherwise control the other browser tests' pages) and share the model the first one loads. The routing, stream
and heartbeat logic is tested in CPython (tests/unit/test_sw_handler.py); here it is the same code behind
``ServiceWorkerGlobalScope`` events, a real model and SwiftShader WebGPU, so every request asks for a token or two.
"""

from __future__ import annotations

import openai.types
import openai.types.chat
import pytest

import webllm_py
from tests.browser.conftest import launch
from tests.browser.test_proxies import ensure_npm_files, evaluate, run_example

PAGE = "__sw__.html"
TIMEOUT_MS = 900_000  # SwiftShader: tens of seconds per model load and prefill, seconds per token
KEEP_ALIVE_MS = 3000

# A page that registers the service worker and creates the engine; onEngineLost reports are kept in window.lost.
PAGE_HTML = f"""<!doctype html><meta charset="utf-8"><title>service worker</title>
<script type="module">
import * as webllm from "./webllm_py.js";
window.webllm = webllm;
window.progress = [];
window.lost = [];
window.ready = (async () => {{
  await navigator.serviceWorker.register("./sw.js", {{ type: "module" }});
  const site = await (await fetch("webllm_py.json")).json();
  window.engine = await webllm.CreateServiceWorkerMLCEngine(
    site.appConfig.model_list[0].model_id,
    {{ initProgressCallback: (r) => window.progress.push(r), onEngineLost: (e) => window.lost.push(e.message),
       maxMissedHeartbeats: 5 }},
    undefined,
    {KEEP_ALIVE_MS},
  );
  return window.engine.modelId;
}})();
</script>"""

SHORT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def sw_context(playwright_instance, tmp_path_factory, dist):
    (dist / PAGE).write_text(PAGE_HTML)
    ctx = launch(playwright_instance, tmp_path_factory.mktemp("chromium-sw-profile"))
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


def open_page(ctx, server):
    page = ctx.new_page()
    page.console = []
    page.on("console", lambda m: page.console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: page.console.append(f"pageerror: {e}"))
    page.goto(server.url + PAGE)
    return page


@pytest.fixture(scope="module")
def tab(sw_context, server):
    page = open_page(sw_context, server)
    assert page.evaluate("() => window.ready") == ["SmolLM2-135M-Instruct-Q4_1"], page.console
    yield page
    page.close()


def test_a_page_controlled_by_the_service_worker_chats(tab):
    out = evaluate(
        tab,
        """
        const whole = await engine.chat.completions.create({ messages: arg, temperature: 0, max_tokens: 2 });
        const chunks = [];
        for await (const c of await engine.chat.completions.create(
            { messages: arg, temperature: 0, max_tokens: 2, stream: true })) chunks.push(c);
        return { whole, chunks, controlled: navigator.serviceWorker.controller !== null,
                 progress: window.progress };
        """,
        SHORT,
    )
    assert "error" not in out, (out, tab.console)
    assert out["controlled"]  # clients.claim(): the first visit is served by the worker without a reload
    whole = openai.types.chat.ChatCompletion.model_validate(out["whole"])
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 2
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in out["chunks"] if c["choices"])
    assert text == whole.choices[0].message.content
    assert out["progress"][-1]["progress"] == 1.0 and "already loaded" not in out["progress"][-1]["text"]


def test_a_second_tab_reuses_the_loaded_model(tab, sw_context, server):
    fetched = server.count(".gguf")
    second = open_page(sw_context, server)
    try:
        out = evaluate(
            second,
            """
            const reply = await engine.chat.completions.create({ messages: arg, temperature: 0, max_tokens: 1 });
            return { reply, progress: window.progress };
            """,
            SHORT,
        )
    finally:
        second.close()
    assert "error" not in out, out
    assert "already loaded" in out["progress"][-1]["text"]  # the reload was skipped
    assert server.count(".gguf") == fetched  # and nothing was fetched for it
    assert out["reply"]["choices"][0]["finish_reason"] == "length"


def test_fetch_v1_answers_like_openai(tab):
    out = evaluate(
        tab,
        """
        const post = (body) => fetch("v1/chat/completions", { method: "POST", body: JSON.stringify(body),
                                                              headers: { "Content-Type": "application/json" } });
        const models = await (await fetch("v1/models")).json();
        const whole = await post({ messages: arg, max_tokens: 1, temperature: 0 });
        const stream = await post({ messages: arg, max_tokens: 2, temperature: 0, stream: true,
                                    stream_options: { include_usage: true } });
        const bad = await post({ messages: arg, top_p: 9 });
        return { models, whole: await whole.json(), wholeType: whole.headers.get("Content-Type"),
                 sse: await stream.text(), sseType: stream.headers.get("Content-Type"),
                 badStatus: bad.status, bad: await bad.json() };
        """,
        SHORT,
    )
    assert "error" not in out, (out, tab.console)
    # every record the engine can load: the site's (the embedded default first), then the prebuilt hub GGUFs
    listed = [openai.types.Model.model_validate(m).id for m in out["models"]["data"]]
    assert listed == [r.model_id for r in webllm_py.prebuilt_app_config.model_list]
    assert out["wholeType"] == "application/json"
    whole = openai.types.chat.ChatCompletion.model_validate(out["whole"])
    assert whole.usage.completion_tokens == 1
    assert out["sseType"].startswith("text/event-stream")
    events = [block[len("data: ") :] for block in out["sse"].split("\n\n") if block.strip()]
    assert events[-1] == "[DONE]" and all(e.startswith("{") for e in events[:-1])
    chunks = [openai.types.chat.ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    assert out["badStatus"] == 400 and out["bad"]["error"]["param"] == "top_p"


def test_a_client_that_disappears_mid_stream_does_not_block_the_next_request(tab, sw_context, server):
    leaving = open_page(sw_context, server)
    first = evaluate(
        leaving,
        """
        window.stream = await engine.chat.completions.create(
            { messages: arg, temperature: 0, max_tokens: 40, stream: true });
        const it = window.stream[Symbol.asyncIterator]();
        return (await it.next()).value;  // one chunk, then the tab goes away without ending the stream
        """,
        SHORT,
    )
    assert "error" not in first, first
    leaving.close()
    out = evaluate(
        tab,
        """
        // and a fetch whose reader aborts mid-stream
        const abort = new AbortController();
        const response = await fetch("v1/chat/completions", { method: "POST", signal: abort.signal,
            body: JSON.stringify({ messages: arg, max_tokens: 40, stream: true }) });
        const reader = response.body.getReader();
        await reader.read();
        abort.abort();
        return await engine.chat.completions.create({ messages: arg, temperature: 0, max_tokens: 1 });
        """,
        SHORT,
    )
    assert "error" not in out, (out, tab.console)
    assert out["choices"][0]["finish_reason"] == "length"


def test_the_same_tabs_abandoned_stream_and_bad_messages(tab):
    """Issue 12 in the service worker: this tab's stream, read once and dropped, does not hold up its next request;
    a message the worker cannot take is answered to this tab (a typed throw), and a body that nests 600 deep or says
    "stream": "false" gets a 400."""
    out = evaluate(
        tab,
        """
        await (async () => {
          const s = await engine.completions.create({ prompt: [1], max_tokens: 8, stream: true });
          await s.next();
        })();
        const after = await engine.completions.create({ prompt: [1], max_tokens: 1 });
        const thrown = new Promise((resolve) => {
          const listen = (e) => {
            if (e.data.uuid !== "bad-1") return;
            navigator.serviceWorker.removeEventListener("message", listen);
            resolve(e.data.content.name);
          };
          navigator.serviceWorker.addEventListener("message", listen);
        });
        navigator.serviceWorker.controller.postMessage({ kind: {}, uuid: "bad-1" });
        const post = (body) => fetch("v1/chat/completions", { method: "POST", body });
        const deep = await post('{"messages": ' + "[".repeat(600) + "]".repeat(600) + "}");
        const streamText = await post(JSON.stringify({ messages: arg, stream: "false" }));
        return { after: after.choices[0].finish_reason, thrown: await thrown,
                 deep: [deep.status, (await deep.json()).error.param],
                 streamText: [streamText.status, (await streamText.json()).error.param] };
        """,
        SHORT,
    )
    assert "error" not in out, (out, tab.console)
    assert out == {
        "after": "length",
        "thrown": "UnknownMessageKindError",
        "deep": [400, "body"],
        "streamText": [400, "stream"],
    }


def test_the_service_worker_examples_answer(tab, sw_context, server, dist):
    # the JS page (the engine and the v1 endpoint), then PyScript through the Python proxy (worker_port.py's
    # JSServiceWorkerPort); both find the model loaded by the tests above
    assert run_example(sw_context, server, "examples/service-worker.html?max_tokens=2").strip()
    ensure_npm_files(dist)
    assert run_example(sw_context, server, "examples/service-worker-pyscript.html?max_tokens=2").strip()


def test_after_the_browser_stops_the_worker_the_next_request_reloads_and_succeeds(tab, sw_context):
    cdp = sw_context.new_cdp_session(tab)
    cdp.send("ServiceWorker.enable")
    # window.stopWorkers(): stop every service worker of the profile, as the browser does to idle ones
    tab.expose_function("stopWorkers", lambda: cdp.send("ServiceWorker.stopAllWorkers"))
    out = evaluate(
        tab,
        """
        window.progress.length = 0;
        const held = engine.chat.completions.create({ messages: arg, temperature: 0, max_tokens: 40 })
            .then(() => "answered", (e) => e.name);
        await new Promise((r) => setTimeout(r, 1000));
        await window.stopWorkers();
        const lostRequest = await held;  // must not hang: the restarted worker's heartbeat does not list it
        const next = await engine.chat.completions.create({ messages: arg, temperature: 0, max_tokens: 1 });
        return { lostRequest, next, progress: window.progress, lost: window.lost };
        """,
        SHORT,
    )
    assert "error" not in out, (out, tab.console)
    assert out["lostRequest"] == "EngineLostError" and out["lost"]  # rejected, and onEngineLost was called
    assert out["next"]["choices"][0]["finish_reason"] == "length"
    texts = [r["text"] for r in out["progress"]]
    assert any("Finish loading" in t and "already loaded" not in t for t in texts), texts  # loaded again
