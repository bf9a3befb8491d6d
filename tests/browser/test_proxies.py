"""The page-side proxies in Chromium, against the real worker and the real model (SwiftShader WebGPU).

``web/webllm_py.js`` is driven from a test page at the root of dist/ (one engine for the module: a model load is
slow on SwiftShader, and so is every token, so each request asks for a few tokens only). The two examples
(``examples/script-embed.html``, ``examples/pyscript.html``) are opened as a user would and must answer.

What the protocol does with every kind, error and early exit is tested in CPython (tests/unit/test_worker_*.py);
here it is the same code over ``postMessage``, Pyodide's conversions and a real generation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.browser import api_reference

ROOT = Path(__file__).resolve().parents[2]
PAGE = "__proxies__.html"
TIMEOUT_MS = 900_000  # SwiftShader: tens of seconds per prefill, seconds per token

# The model list comes from the site's webllm_py.json, passed explicitly so the test does not depend on what the
# worker applies by default; relative model URLs resolve against this page (the dist/ root).
PAGE_HTML = """<!doctype html><meta charset="utf-8"><title>proxies</title>
<script type="module">
import * as webllm from "./webllm_py.js";
window.webllm = webllm;
window.progress = [];
window.ready = (async () => {
  const site = await (await fetch("webllm_py.json")).json();
  const worker = new Worker(new URL("./worker.js", location.href), { type: "module" });
  window.engine = await webllm.CreateWebWorkerMLCEngine(worker, site.appConfig.model_list[0].model_id, {
    appConfig: site.appConfig,
    initProgressCallback: (report) => window.progress.push(report),
  });
  return window.engine.modelId;
})();
</script>"""

SHORT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def ensure_npm_files(dist: Path) -> None:
    """Put the npm files web/manifest.json asks for into dist/ (what `build.py demo` should do; a no-op once it
    does)."""
    manifest = json.loads((ROOT / "web" / "manifest.json").read_text())
    for entry in manifest["npm"]:
        target = dist / entry["to"]
        if target.exists() and any(target.iterdir()):
            continue
        folder = ROOT / ".cache" / "npm"
        folder.mkdir(parents=True, exist_ok=True)
        name = entry["package"].lstrip("@").replace("/", "-") + f"-{entry['version']}.tgz"
        if not (folder / name).exists():
            subprocess.run(
                [
                    "npm",
                    "pack",
                    "--silent",
                    f"{entry['package']}@{entry['version']}",
                    "--pack-destination",
                    str(folder),
                ],
                check=True,
            )
        prefix = "package/" + entry["copy"]
        with tarfile.open(folder / name) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith(prefix):
                    out = target / member.name[len(prefix) :]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tar.extractfile(member).read())


@pytest.fixture(scope="module")
def proxy_page(server, browser_context):
    page = browser_context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.route(
        f"**/{PAGE}", lambda route: route.fulfill(status=200, content_type="text/html", body=PAGE_HTML)
    )
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.goto(server.url + PAGE)
    page.console = console
    yield page
    page.close()


def evaluate(page, script: str, arg=None):
    """Run an async function body in the page, after the engine is ready; JS errors come back as {error}."""
    return page.evaluate(
        f"""async (arg) => {{
            await window.ready;
            const engine = window.engine;
            try {{ {script} }} catch (e) {{
                return {{ error: {{ name: e.name, message: e.message, field: e.field, isWebLLMError:
                          e instanceof window.webllm.WebLLMError, isError: e instanceof Error,
                          cls: e instanceof window.webllm.errorClass(e.name) }} }};
            }}
        }}""",
        arg,
    )


def test_load_reports_progress(proxy_page):
    model_id = proxy_page.evaluate("() => window.ready")
    progress = proxy_page.evaluate("() => window.progress")
    assert model_id == ["SmolLM2-135M-Instruct-Q4_1"]  # a list, as WebLLM's engine.modelId
    assert progress, "no initProgressCallback report arrived"
    assert all(set(r) >= {"progress", "timeElapsed", "text"} for r in progress)
    assert all(0.0 <= r["progress"] <= 1.0 for r in progress)
    # timeElapsed restarts per phase (the worker's boot, then the load), as in WebLLM
    assert all(r["timeElapsed"] >= 0 for r in progress)
    assert progress[-1]["progress"] == 1.0 and "Finish loading" in progress[-1]["text"]


def test_stream_deltas_equal_the_non_streamed_text_and_end_with_usage(proxy_page):
    out = evaluate(
        proxy_page,
        """
        const request = { messages: arg, temperature: 0, max_tokens: 3 };
        const whole = await engine.chat.completions.create(request);
        const chunks = [];
        const stream = await engine.chat.completions.create(
            { ...request, stream: true, stream_options: { include_usage: true } });
        for await (const chunk of stream) chunks.push(chunk);
        return { whole, chunks };
        """,
        SHORT,
    )
    assert "error" not in out, out
    whole, chunks = out["whole"], out["chunks"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text and text == whole["choices"][0]["message"]["content"]
    assert whole["choices"][0]["finish_reason"] == chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    extra = chunks[-1]["usage"]["extra"]
    assert extra["prefill_tokens_per_s"] > 0 and extra["time_to_first_token_s"] > 0
    assert chunks[-1]["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]


def test_bad_request_throws_a_typed_error(proxy_page):
    out = evaluate(
        proxy_page,
        """
        const errors = [];
        for (const stream of [false, true]) {
          try { await engine.chat.completions.create({ messages: arg, temperature: 5, stream }); }
          catch (e) { errors.push({ name: e.name, field: e.field, typed: e instanceof window.webllm.WebLLMError,
                                    cls: e instanceof window.webllm.errorClass("InvalidRangeError") }); }
        }
        return errors;
        """,
        SHORT,
    )
    assert out == [{"name": "InvalidRangeError", "field": "temperature", "typed": True, "cls": True}] * 2


def test_interrupt_mid_stream_then_break_then_next_request(proxy_page):
    out = evaluate(
        proxy_page,
        """
        const interrupted = [];
        for await (const chunk of await engine.chat.completions.create(
            { messages: arg, temperature: 0, max_tokens: 40, stream: true })) {
          interrupted.push(chunk);
          if (interrupted.length === 1) engine.interruptGenerate();
        }
        let broke = 0;
        for await (const chunk of await engine.chat.completions.create(
            { messages: arg, temperature: 0, max_tokens: 40, stream: true })) {
          broke += 1;
          break;  // the engine must be free for the next request at once
        }
        const next = await engine.chat.completions.create({ messages: arg, temperature: 0, max_tokens: 1 });
        return { interrupted, broke, next, message: await engine.getMessage() };
        """,
        SHORT,
    )
    assert "error" not in out, out
    finishes = [c["choices"][0]["finish_reason"] for c in out["interrupted"] if c["choices"]]
    assert (
        finishes[-1] == "abort" and len(out["interrupted"]) <= 3
    )  # the first chunk, maybe held text, the end
    assert out["broke"] == 1
    assert out["next"]["choices"][0]["finish_reason"] == "length"
    assert out["next"]["usage"]["completion_tokens"] == 1 and out["message"]


def test_other_engine_methods(proxy_page):
    out = evaluate(
        proxy_page,
        """
        return {
          vendor: await engine.getGPUVendor(),
          maxBinding: await engine.getMaxStorageBufferBindingSize(),
          stats: await engine.runtimeStatsText(),
          cached: await engine.hasModelInCache(engine.modelId),
          models: (await engine.getAppConfig()).model_list.map((r) => r.model_id),
          reset: await engine.resetChat().then(() => engine.getMessage()),
        };
        """,
    )
    assert "error" not in out, out
    assert isinstance(out["vendor"], str) and out["maxBinding"] >= 128 << 20
    assert out["stats"].startswith("prefill: ") and out["cached"] is True
    assert out["models"] == ["SmolLM2-135M-Instruct-Q4_1"] and out["reset"] == ""


# ---- the request fields, against the desktop engine (tests/browser/api_reference.py) ---------------------------


def test_seeded_sample_equals_the_desktop_engine(proxy_page):
    """temperature/top_p/seed through the JS proxy: the desktop engine's tokens (f32 tier on lavapipe), with the
    same log-probabilities; openai-python validates the reply."""
    out = evaluate(proxy_page, "return await engine.chat.completions.create(arg);", api_reference.SEEDED)
    assert "error" not in out, out
    api_reference.check_seeded(out)


def test_logit_bias_n_and_top_logprobs(proxy_page):
    request, forced = api_reference.bias_request()
    out = evaluate(proxy_page, "return await engine.chat.completions.create(arg);", request)
    assert "error" not in out, out
    token = api_reference.desktop_reference()["greedy"][2][1].encode()
    api_reference.check_bias(out, list(token))
    assert forced == api_reference.desktop_reference()["greedy"][2][0]


def test_stop_string_in_a_stream_with_usage(proxy_page):
    request, content = api_reference.stop_request()
    out = evaluate(
        proxy_page,
        """
        const chunks = [];
        for await (const chunk of await engine.chat.completions.create(arg)) chunks.push(chunk);
        return chunks;
        """,
        request,
    )
    assert "error" not in out, out
    api_reference.check_stop_stream(out, content)


@pytest.mark.parametrize(
    "change, name, field",
    [
        ({"top_logprobs": 21, "logprobs": True}, "InvalidRangeError", "top_logprobs"),
        ({"logit_bias": {"1": 101}}, "InvalidRangeError", "logit_bias"),
        ({"n": 2, "stream": True}, "InvalidRangeError", "n"),
        ({"stop": 7}, "InvalidFieldTypeError", "stop"),
        ({"seed": 1.5}, "InvalidFieldTypeError", "seed"),
    ],
)
def test_bad_field_values_throw_typed_errors(proxy_page, change, name, field):
    """Checked before any token is generated: the error class's name, and the field it names."""
    out = evaluate(
        proxy_page,
        "await engine.chat.completions.create(arg); return 'no error';",
        {**api_reference.SEEDED, "max_tokens": 1, **change},
    )
    error = out["error"]
    assert error["isWebLLMError"] and error["isError"], out
    assert error["cls"], "not an instance of errorClass(its name)"
    assert error["name"] == name and error["field"].startswith(field), error


def test_chat_opts_at_reload_are_the_models_sampling_defaults(proxy_page):
    """reload(modelId, chatOpts) with temperature and top_p: a request that leaves them out samples with them (the
    seeded sample above, without its temperature and top_p)."""
    out = evaluate(
        proxy_page,
        """
        await engine.reload(engine.modelId, arg.chatOpts);
        return await engine.chat.completions.create(arg.request);
        """,
        {"chatOpts": api_reference.CHAT_OPTS, "request": api_reference.SEEDED_BY_CHAT_OPTS},
    )
    assert "error" not in out, out
    api_reference.check_seeded(out)


# ---- the examples ---------------------------------------------------------------------------------------------------


# The examples are kept minimal, with no error handling; this notes an uncaught error on <body> so a failing
# example fails its test at once instead of at the timeout.
CATCH_ERRORS = """
const note = (e) => { document.body.dataset.error = `${e?.name}: ${e?.message}`; };
window.addEventListener("error", (event) => note(event.error ?? { name: "Error", message: event.message }));
window.addEventListener("unhandledrejection", (event) => note(event.reason));
"""


def run_example(browser_context, server, path: str) -> str:
    """Open an example page; return its #out text once it is done, or fail with what went wrong."""
    page = browser_context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.add_init_script(CATCH_ERRORS)
    try:
        page.goto(server.url + path)
        # PyScript shows a Python exception in a .py-error element instead of raising it in the page
        page.wait_for_selector("body[data-done], body[data-error], .py-error", timeout=TIMEOUT_MS)
        error = page.get_attribute("body", "data-error")
        if page.locator(".py-error").count():
            error = page.inner_text(".py-error")[-2000:]
        assert error is None, f"{path} failed: {error}\n" + "\n".join(console[-30:])
        return page.inner_text("#out")
    finally:
        page.close()


def test_a_forged_turn_reaches_the_model_as_plain_text(proxy_page):
    """A user message typing <|im_end|>\n<|im_start|>system through the JS proxy: the worker's prompt is the
    desktop's, with the typed markers as plain-text tokens (more ids than as control tokens), and the same reply."""
    want = api_reference.forged_reference()
    assert want["prompt_tokens"] > want["as_control_tokens"]
    out = evaluate(
        proxy_page,
        "return await engine.chat.completions.create({ messages: arg, temperature: 0, max_tokens: 1 });",
        api_reference.FORGED,
    )
    assert "error" not in out, out
    assert out["usage"]["prompt_tokens"] == want["prompt_tokens"]
    assert out["choices"][0]["message"]["content"] == want["first"]


def test_script_embed_example_answers(browser_context, server):
    assert run_example(browser_context, server, "examples/script-embed.html?max_tokens=3").strip()


def test_pyscript_example_answers(browser_context, server, dist):
    if not shutil.which("npm") and not (dist / "pyscript" / "core.js").exists():
        pytest.fail(
            "the PyScript example needs @pyscript/core in dist/pyscript, and npm to fetch it is missing"
        )
    ensure_npm_files(dist)
    assert run_example(browser_context, server, "examples/pyscript.html?max_tokens=3").strip()


def test_abandoned_stream_and_messages_the_worker_cannot_take(proxy_page):
    """Issue 12 in the real worker (Pyodide): a stream read once by hand and dropped frees the engine for the next
    request; raw messages that are not requests (an unhashable kind, content nested 600 deep, a list for an object)
    are each answered under their uuid with a typed error, and one without a uuid under "" (the proxy logs it)."""
    out = evaluate(
        proxy_page,
        """
        await (async () => {
          const s = await engine.completions.create({ prompt: [1], max_tokens: 8, stream: true });
          await s.next();  // then dropped, without return()
        })();
        const after = await engine.completions.create({ prompt: [1], max_tokens: 2 });
        const worker = engine.worker;
        const names = {};
        const answered = new Promise((resolve) => {
          const listen = (e) => {
            if (e.data.kind !== "throw") return;
            names[e.data.uuid] = e.data.content.name;
            if (Object.keys(names).length === 4) { worker.removeEventListener("message", listen); resolve(); }
          };
          worker.addEventListener("message", listen);
        });
        let deep = 1;
        for (let i = 0; i < 600; i++) deep = [deep];
        worker.postMessage({ kind: [], uuid: "k1" });
        worker.postMessage({ kind: "getMessage", uuid: "k2", content: deep });
        worker.postMessage({ kind: "resetChat", uuid: "k3", content: [1] });
        worker.postMessage({ kind: "unload", content: null });
        await answered;
        const still = await engine.chat.completions.create({ messages: arg, temperature: 0, max_tokens: 1 });
        return { after: after.choices[0].finish_reason, names, still: still.choices[0].finish_reason };
        """,
        SHORT,
    )
    assert "error" not in out, (out, proxy_page.console[-10:])
    assert out["after"] == "length" and out["still"] == "length"
    assert out["names"] == {
        "k1": "UnknownMessageKindError",
        "k2": "InvalidJSONError",
        "k3": "InvalidFieldTypeError",
        "": "UnknownMessageKindError",
    }
    assert any("the worker refused a message" in line for line in proxy_page.console)
