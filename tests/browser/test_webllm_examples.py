"""WebLLM's own examples (mlc-ai/web-llm c51c9c0, examples/) as plain pages on our module, in Chromium.

Each page in tests/browser/webllm_examples/ is one example translated by us: the import changed to our module, the
model id to the harness's (webllm_examples/site.py), TypeScript types removed, bundler-only dependencies replaced by
tiny local stand-ins; its header comment says what else was adapted (logit_bias ids, loop and token counts, for
SwiftShader's speed). The test opens each page as a user would, clicks what a user would click, lets it run, and
reads what it printed: a recorder installed before the page's scripts keeps every console call's arguments as JSON
and every uncaught error and unhandled rejection, which is how the examples report (console.log, throw). An example
is done when its last output came (or it threw); then its checks run. Examples that need what other issues add
(JSON mode, schemas, tools, embeddings, vision, logit processors, Qwen3's thinking switch) throw our typed error
naming what is missing, and their checks say which; they start passing when those land (update the table).

The examples run two at a time (the machine's two cores: one page's Python boots in its renderer while another's
shaders compile in the GPU process), each with its own worker, as on a user's machine; the results are collected
once and each example's test checks its own. SwiftShader compiles a model's ~15 pipelines in seconds, and every
example loads its model at least once, so this is most of the time these tests take.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.browser.webllm_examples.site import SITE, build_extensions, build_site, extension_id

TIMEOUT_S = 1500  # for all examples of a run together: a hang guard (about 4 minutes on an idle machine)
IN_FLIGHT = 2  # examples run at once

# Records every console call (arguments as JSON; Errors as {name, message, field, url}), uncaught errors and rejections.
RECORDER = """
window.__webllm = { logs: [], errors: [] };
(() => {
  const plain = (value) => {
    try {
      return JSON.parse(JSON.stringify(value, (key, v) =>
        v instanceof Error ? { name: v.name, message: v.message, field: v.field, url: v.url } : v) ?? "null");
    } catch { return String(value); }
  };
  for (const level of ["log", "info", "warn", "error"]) {
    const original = console[level].bind(console);
    console[level] = (...args) => {
      window.__webllm.logs.push({ level, t: performance.now() / 1000, args: args.map(plain) });
      original(...args);
    };
  }
  window.addEventListener("error", (e) => window.__webllm.errors.push(plain(e.error ?? { name: "Error", message: e.message })));
  window.addEventListener("unhandledrejection", (e) => window.__webllm.errors.push(plain(e.reason)));
})();
"""


def logged(text: str) -> str:
    """JS: a console line whose first argument is ``text``."""
    return f"w.logs.some((l) => l.args[0] === {text!r})"


def logged_prefix(text: str) -> str:
    return f"w.logs.some((l) => typeof l.args[0] === 'string' && l.args[0].startsWith({text!r}))"


def text_of(selector: str) -> str:
    return f"(document.querySelector({selector!r})?.innerText ?? '')"


USAGE = "w.logs.filter((l) => l.args[0] && l.args[0].total_tokens !== undefined).length"


@dataclass
class Example:
    page: str  # under the site, e.g. "get-started/index.html"
    done: str  # JS condition ("w" is window.__webllm): the example has finished
    check: Callable[[dict[str, Any]], None] = lambda state: None  # asserts on what it printed
    errors: list[str] = field(default_factory=list)  # the names of the errors it throws (uncaught)
    # What a user does, in order: (JS condition to wait for, action on the Playwright page; an action that returns
    # False is tried again).
    steps: list[tuple[str, Callable[[Any], None]]] = field(default_factory=list)


def args(state: dict, first: str) -> list[Any]:
    """The console lines whose first argument is ``first``: their other arguments."""
    return [entry["args"][1:] for entry in state["logs"] if entry["args"] and entry["args"][0] == first]


def objects(state: dict, kind: str) -> list[dict]:
    """What was logged as an object of this OpenAI kind ("chat.completion", "chat.completion.chunk"...)."""
    return [
        e["args"][0]
        for e in state["logs"]
        if isinstance(e["args"][0], dict) and e["args"][0].get("object") == kind
    ]


def usages(state: dict) -> list[dict]:
    return [
        e["args"][0]
        for e in state["logs"]
        if isinstance(e["args"][0], dict) and "total_tokens" in e["args"][0]
    ]


def messages_of(state: dict, level: str) -> list[str]:
    return [" ".join(map(str, e["args"])) for e in state["logs"] if e["level"] == level]


# ---- what each example must have printed -----------------------------------------------------------------------------


def check_get_started(state: dict) -> None:
    (reply,) = objects(state, "chat.completion")
    assert len(reply["choices"]) == 3
    for choice in reply["choices"]:
        assert choice["finish_reason"] == "length"
        tokens = choice["logprobs"]["content"]
        assert len(tokens) == 4 and all(len(t["top_logprobs"]) == 2 for t in tokens)
        # logit_bias -100: ids 70 and 71 never come out
        assert not {bytes(t["bytes"]) for t in tokens} & {bytes([67]), bytes([68])}
    assert usages(state) == [reply["usage"]] and reply["usage"]["completion_tokens"] == 12


def check_stream(state: dict) -> None:
    chunks = objects(state, "chat.completion.chunk")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    ((final,),) = args(state, "Final message:\n")
    assert final == text and chunks[-1]["usage"]["completion_tokens"] == 4
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


def check_streaming(state: dict) -> None:
    check_stream(state)
    tokens = [
        t
        for c in objects(state, "chat.completion.chunk")
        if c["choices"]
        for t in c["choices"][0]["logprobs"]["content"]
    ]
    assert len(tokens) == 4 and all(len(t["top_logprobs"]) == 2 for t in tokens)


def check_latency_breakdown(state: dict) -> None:
    assert args(state, "Completion tokens: ") == [[[4, 4]]]
    ((speeds,),) = args(state, "Decode tokens per second: ")
    assert len(speeds) == 2 and all(s > 0 for s in speeds)


def check_multi_round(state: dict) -> None:
    ((first,),) = args(state, "Requset 0 prompt tokens: ")
    ((second,),) = args(state, "Requset 1 prompt tokens: ")
    assert 0 < second < first  # the second round prefilled only its new turn: the KV cache was reused


def check_seed(state: dict) -> None:
    first, second = objects(state, "chat.completion")
    assert [c["message"]["content"] for c in first["choices"]] == [
        c["message"]["content"] for c in second["choices"]
    ]
    assert len(first["choices"]) == 3 and len(usages(state)) == 2


def check_abort_reload(state: dict) -> None:
    assert any("was aborted" in m for m in messages_of(state, "warn")), state["logs"]
    assert not any("Finish loading" in m for m in messages_of(state, "log"))
    assert args(state, "calling unload") == [[]]


def check_multi_models(state: dict) -> None:
    assert [u["completion_tokens"] for u in usages(state)] == [4, 4]
    assert len(args(state, "Final message 1:\n")) == 1 and len(args(state, "Final message 2:\n")) == 1


def check_cache_usage(state: dict) -> None:
    assert args(state, "Using Cross-Origin Storage") == [[]]
    assert args(state, "hasModelInCache: ") == [[True]]
    assert len(objects(state, "chat.completion")) == 2 and args(state, "Reload model end") == [[]]
    assert any('"cross-origin" is served by the Cache API' in m for m in messages_of(state, "warn"))


def check_integrity(state: dict) -> None:
    assert state["text"]["#status"].startswith("Response:"), state["text"]


def check_integrity_tampered(state: dict) -> None:
    status = state["text"]["#status"]
    assert status.startswith("Integrity verification failed!"), status
    assert "URL: http" in status and "/webllm-examples/models/tiny-llama-chat.gguf" in status
    assert "Expected: sha256-" in status and "Got: sha256-" in status


def check_field(name: str, field: str) -> Callable[[dict], None]:
    """The one error thrown is ``name``, about a field whose name contains ``field``."""

    def check(state: dict) -> None:
        (error,) = state["errors"]
        assert error["name"] == name and field in (error.get("field") or ""), error

    return check


def check_qwen3(state: dict) -> None:
    check_field("UnsupportedFieldError", "extra_body.enable_thinking")(state)
    assert len(args(state, "Final message:\n")) == 1  # the first request ran


def check_subgroups(state: dict) -> None:
    assert args(state, "supportsSubgroups: ") == [
        [False]
    ]  # SwiftShader: the example keeps the base model library
    check_get_started(state)


def check_structural_tag(state: dict) -> None:
    errors = [e["args"][0] for e in state["logs"] if e["level"] == "error" and isinstance(e["args"][0], dict)]
    assert (
        errors and errors[-1]["name"] == "UnsupportedFieldError" and errors[-1]["field"] == "response_format"
    )


def check_function_calling_manual(state: dict) -> None:
    responses = [e["args"][0] for e in state["logs"] if str(e["args"][0]).startswith("Response ")]
    assert [r.split(":")[0] for r in responses] == ["Response 1", "Response 2", "Response 3", "Response 4"]
    assert [u["completion_tokens"] for u in usages(state)] == [4, 4, 4, 4]


def check_chat_stats(selector: str) -> Callable[[dict], None]:
    def check(state: dict) -> None:
        assert state["text"][selector].startswith("prompt_tokens: "), state["text"]
        assert "decoding: " in state["text"][selector]

    return check


def click(selector: str) -> Callable[[Any], None]:
    return lambda page: page.click(selector)


def type_and_send(input_selector: str, send_selector: str) -> Callable[[Any], None]:
    def act(page) -> None:
        page.fill(input_selector, "Hi there")
        page.click(send_selector)

    return act


def select_tiny(page) -> None:
    page.select_option("#chatui-select", "tiny-llama-chat")


EXAMPLES: dict[str, Example] = {
    "get-started": Example("get-started/index.html", f"{USAGE} >= 1", check_get_started),
    "get-started-web-worker": Example(
        "get-started-web-worker/index.html", logged("Final message:\n"), check_stream
    ),
    "get-started-latency-breakdown": Example(
        "get-started-latency-breakdown/index.html",
        logged("Time per output token (s): "),
        check_latency_breakdown,
    ),
    "streaming": Example("streaming/index.html", logged("Final message:\n"), check_streaming),
    "multi-round-chat": Example(
        "multi-round-chat/index.html", logged("Requset 1 prompt tokens: "), check_multi_round
    ),
    "seed-to-reproduce": Example("seed-to-reproduce/index.html", f"{USAGE} >= 2", check_seed),
    # echo with logprobs: webllm_py refuses it (OpenAI's logprobs would cover the echoed prompt, which is not computed);
    # WebLLM answers with the completion's logprobs only.
    "text-completion": Example(
        "text-completion/index.html",
        "false",
        check_field("UnsupportedFieldError", "echo"),
        ["UnsupportedFieldError"],
    ),
    "abort-reload": Example(
        "abort-reload/index.html",
        "w.logs.some((l) => l.level === 'warn' && String(l.args[0]).includes('was aborted'))",
        check_abort_reload,
    ),
    "multi-models": Example("multi-models/index.html", logged("Final message 2:\n"), check_multi_models),
    "cache-usage": Example(
        "cache-usage/index.html",
        "w.logs.filter((l) => l.args[0] && l.args[0].object === 'chat.completion').length >= 2",
        check_cache_usage,
    ),
    "integrity-verification": Example(
        "integrity-verification/index.html",
        f"/^(Response|Integrity|Error)/.test({text_of('#status')})",
        check_integrity,
    ),
    "integrity-verification-tampered": Example(
        "integrity-verification-tampered/index.html",
        f"/^(Response|Integrity|Error)/.test({text_of('#status')})",
        check_integrity_tampered,
    ),
    "subgroups-usage": Example("subgroups-usage/index.html", f"{USAGE} >= 1", check_subgroups),
    "service-worker": Example("service-worker/index.html", logged("Final message:\n"), check_stream),
    "function-calling-manual": Example(
        "function-calling-manual/index.html", logged_prefix("Response 4: "), check_function_calling_manual
    ),
    "simple-chat-js": Example(
        "simple-chat-js/index.html",
        f"{text_of('#chat-stats')}.startsWith('prompt_tokens')",
        check_chat_stats("#chat-stats"),
        steps=[
            ("document.querySelectorAll('#model-selection option').length > 0", click("#download")),
            ("!document.getElementById('send').disabled", type_and_send("#user-input", "#send")),
        ],
    ),
    "simple-chat-ts": Example(
        "simple-chat-ts/index.html",
        f"{text_of('#chatui-info-label')}.startsWith('prompt_tokens')",
        check_chat_stats("#chatui-info-label"),
        steps=[
            (
                "document.querySelector('#chatui-select option[value=\"tiny-llama-chat\"]') !== null",
                select_tiny,
            ),
            (
                f"{text_of('#chatui-chat')}.includes('Finish loading')",
                type_and_send("#chatui-input", "#chatui-send-btn"),
            ),
        ],
    ),
    "next-simple-chat": Example(
        "next-simple-chat/index.html",
        f"{text_of('#chatui-info-label')}.startsWith('prompt_tokens')",
        check_chat_stats("#chatui-info-label"),
        steps=[
            ("true", click("#download")),
            (
                f"{text_of('#chatui-chat')}.includes('Finish loading')",
                type_and_send("#chatui-input", "#send"),
            ),
        ],
    ),
    # ---- what needs features other issues add: our typed error, naming what is missing ----
    "json-mode": Example(
        "json-mode/index.html",
        "false",
        check_field("UnsupportedFieldError", "response_format"),
        ["UnsupportedFieldError"],
    ),
    "json-schema": Example(
        "json-schema/index.html",
        "false",
        check_field("UnsupportedFieldError", "response_format"),
        ["UnsupportedFieldError"],
    ),
    "structural-tag-tool-use": Example(
        "structural-tag-tool-use/index.html", logged_prefix("Error: "), check_structural_tag
    ),
    "function-calling-openai": Example(
        "function-calling-openai/index.html",
        "false",
        check_field("UnsupportedFieldError", "tools"),
        ["UnsupportedFieldError"],
    ),
    "qwen3": Example("qwen3/index.html", "false", check_qwen3, ["UnsupportedFieldError"]),
    "logit-processor": Example(
        "logit-processor/index.html",
        "false",
        check_field("UnsupportedFieldError", "logitProcessorRegistry"),
        ["UnsupportedFieldError"],
    ),
    "embeddings": Example(
        "embeddings/index.html", "false", check_field("UnsupportedModelError", ""), ["UnsupportedModelError"]
    ),
    "vision-model": Example(
        "vision-model/index.html",
        "false",
        check_field("UnsupportedModelError", ""),
        ["UnsupportedModelError"],
    ),
}
# read from each page when it is done
TEXTS = ("#status", "#chat-stats", "#chatui-info-label", "#chatui-chat", "#timestamp", "#model-name")


class Run:
    """One example's page, stepped by ``run_examples``."""

    def __init__(self, name: str, example: Example, context, url: str):
        self.name = name
        self.example = example
        self.page = context.new_page()
        self.page.add_init_script(RECORDER)
        self.page.goto(url)
        self.started = time.monotonic()
        self.steps = list(self.example.steps)
        self.state: dict[str, Any] | None = None

    def step(self) -> bool:
        """Advance by what can be done now; True once the example is done (or threw)."""
        done = self.page.evaluate(
            f"() => {{ const w = window.__webllm; return w.errors.length > 0 || Boolean({self.example.done}); }}"
        )
        if done:
            self.state = self.page.evaluate("() => window.__webllm")
            self.state["text"] = {s: self.page.evaluate(f"() => {text_of(s)}") for s in TEXTS}
            self.state["seconds"] = time.monotonic() - self.started
            self.page.close()
            return True
        # An action that returns False could not be done yet (the page is not listening yet): tried again later.
        if self.steps and self.page.evaluate(f"() => Boolean({self.steps[0][0]})"):
            if self.steps[0][1](self.page) is not False:
                self.steps.pop(0)
        return False


def run_examples(
    context, examples: dict[str, Example], url_of: Callable[[str], str]
) -> dict[str, dict[str, Any]]:
    """Run ``examples``, IN_FLIGHT at a time, each on a page of its own; name -> what it printed (``Run.state``)."""
    waiting, running, done = list(examples), [], {}
    deadline = time.monotonic() + TIMEOUT_S
    while waiting or running:
        while waiting and len(running) < IN_FLIGHT:
            name = waiting.pop(0)
            running.append(Run(name, examples[name], context, url_of(name)))
        for run in list(running):
            if run.step():
                running.remove(run)
                done[run.name] = run.state
        if time.monotonic() > deadline:
            for run in running:
                done[run.name] = {"timeout": True, "state": run.page.evaluate("() => window.__webllm")}
                run.page.close()
            break
        time.sleep(0.25)
    print(
        "\nWebLLM examples, seconds each:", {name: round(r.get("seconds", -1), 1) for name, r in done.items()}
    )
    return done


def selected(request, test_name: str) -> set[str]:
    """The example names of ``test_name`` this pytest run collected (``-k`` may select a few)."""
    return {
        item.callspec.params["name"]
        for item in request.session.items
        if getattr(item, "originalname", None) == test_name
    }


@pytest.fixture(scope="module")
def results(request, dist, server, browser_context) -> dict[str, dict[str, Any]]:
    build_site(dist)
    names = selected(request, "test_webllm_example")
    examples = {name: example for name, example in EXAMPLES.items() if name in names}
    return run_examples(browser_context, examples, lambda name: f"{server.url}{SITE}/{EXAMPLES[name].page}")


def check_outcome(name: str, example: Example, state: dict[str, Any] | None) -> None:
    assert state is not None and not state.get("timeout"), f"{name} did not finish: {state}"
    names = [e.get("name") if isinstance(e, dict) else e for e in state["errors"]]
    tail = "\n".join(map(str, state["logs"][-15:]))
    assert names == example.errors, f"{name} threw {state['errors']}\n{tail}"
    example.check(state)


@pytest.mark.parametrize("name", EXAMPLES)
def test_webllm_example(name, results):
    check_outcome(name, EXAMPLES[name], results.get(name))


# ---- the two Chrome extension examples: unpacked into a profile of their own ----------------------------------------


def type_and_submit(page) -> bool:
    """Type a question and send it, once the popup listens: its keyup handler (added when its engine is ready)
    enables the button, as a user's typing does."""
    page.fill("#query-input", "")
    page.type("#query-input", "Hi")
    if page.is_disabled("#submit-button"):
        return False
    page.click("#submit-button")
    return True


def check_answered(state: dict) -> None:
    assert state["text"]["#timestamp"], state["text"]  # updateAnswer ran: the reply streamed into the popup


def check_popup_engine(state: dict) -> None:
    check_answered(state)
    assert state["text"]["#model-name"] == "Now chatting with tiny-llama-chat"
    assert len(args(state, "response")) == 1 and args(state, "message") == [["Hi"]]


EXTENSION_EXAMPLES: dict[str, Example] = {
    # the popup's own engine (CreateMLCEngine): a worker of the extension page. enableInputs() removes the progress
    # bar once a report says 1.
    "chrome-extension": Example(
        "popup.html",
        logged("response"),
        check_popup_engine,
        steps=[("document.getElementById('loadingContainer') === null", type_and_submit)],
    ),
    # the engine in the extension's service worker (ExtensionServiceWorkerMLCEngineHandler), the popup a client;
    # its listeners are added once its engine is created (type_and_submit tries until the button answers)
    "chrome-extension-webgpu-service-worker": Example(
        "popup.html", f"{text_of('#timestamp')} !== ''", check_answered, steps=[("true", type_and_submit)]
    ),
}


@pytest.fixture(scope="module")
def extension_results(request, dist, playwright_instance, tmp_path_factory) -> dict[str, dict[str, Any]]:
    names = selected(request, "test_webllm_extension_example")
    if not names:
        return {}
    build_site(dist)
    folders = build_extensions(dist)
    load = ",".join(str(folders[name]) for name in names)
    ctx = playwright_instance.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("chromium-examples-ext")),
        executable_path=CHROMIUM,
        headless=True,
        args=[*CHROMIUM_ARGS, f"--disable-extensions-except={load}", f"--load-extension={load}"],
        ignore_default_args=["--disable-extensions"],
    )
    try:
        examples = {name: EXTENSION_EXAMPLES[name] for name in names}
        return run_examples(
            ctx, examples, lambda name: f"chrome-extension://{extension_id(folders[name])}/popup.html"
        )
    finally:
        ctx.close()


@pytest.mark.parametrize("name", EXTENSION_EXAMPLES)
def test_webllm_extension_example(name, extension_results):
    check_outcome(name, EXTENSION_EXAMPLES[name], extension_results.get(name))
