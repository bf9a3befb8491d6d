"""SmolLM2-135M in each K-quant file chats in Chromium token for token as transformers fp32 and the desktop (f32 tier).

The files are llama.cpp's requantizations of the default Q4_1 model, remade by scripts/requantize.py into
~/.cache/webllm_py/requantized/ and refused unless their sha256 is llama.cpp's (tests/e2e/kquant_models.py). Q4_K_M,
first, mixes four block formats in one model: Q5_0 q/k/o/gate/up (rows of 576 are not multiples of 256), Q8_0 v
in 14 layers next to Q5_0 v in the others, Q6_K / Q4_K ffn_down, and the tied Q8_0 embedding; Q5_K_M, Q6_K and Q8_0
follow in the same page (a reload each). Measured on the 2-core VM at load ~3: 43-68 s per file in the browser
(load 14-30 s, chat 28-38 s on SwiftShader), 8-15 s on the desktop; 4.6 min for the four.

A second server on 127.0.0.1 serves the cache folder as a model hub does: another origin, with CORS headers. The
page runs one worker through the JS proxy (web/webllm_py.js); its app config lists the file by URL with its size
and sha256 (the download is checked against them). SwiftShader has no shader-f16, so the browser runs the f32
tier; the desktop side steps the same prompt on lavapipe in the f32 tier.

Per file, on the conversation ``capital_system`` of tests/data/arch/smollm2_kquants.json (32 prompt tokens;
transformers' greedy reply is 7 tokens and an end of turn in every file, each step's top-2 margin at least 0.54
logits, so no near-tie):

1. the browser's reply at temperature 0 (``logprobs: true`` gives each token's bytes, which name its id: the
   vocabulary's pieces are distinct) is transformers' greedy reply, and ends by itself (finish_reason "stop");
2. the desktop engine's greedy ids on the same prompt are the same;
3. each token's log-probability agrees between the two hosts within LOGPROB_TOL (both compute in f32; the
   reduction orders of SwiftShader and lavapipe differ). Measured: 5e-5.
"""

from __future__ import annotations

import http.server
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest

from tests.e2e.kquant_models import RECORD, cache_dir, kquant_path

BROWSER_FTYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")  # every K-quant file (issue 14); ~1-2 min each in CI
CHAT = "capital_system"
CONTEXT = 256
MAX_TOKENS = 16  # more than the reply: it must stop by itself
LOGPROB_TOL = 1e-3
PAGE = "__kquant_chat__.html"
TIMEOUT_MS = 900_000  # SwiftShader: a load and a 32-token prefill take tens of seconds

PAGE_HTML = """<!doctype html><meta charset="utf-8"><title>kquant chat</title>
<script type="module">
import * as webllm from "./webllm_py.js";
window.webllm = webllm;
window.worker = new Worker(new URL("./worker.js", location.href), { type: "module" });
</script>"""

# One evaluate per file: load it (the first call makes the engine), chat, then delete it from browser storage.
CHAT_JS = """async ({ appConfig, modelId, request }) => {
  const t0 = performance.now();
  if (!window.engine) {
    window.engine = await window.webllm.CreateWebWorkerMLCEngine(window.worker, modelId, { appConfig });
  } else {
    await window.engine.reload(modelId);
  }
  const t1 = performance.now();
  const reply = await window.engine.chat.completions.create(request);
  const t2 = performance.now();
  await window.engine.deleteModelInCache(modelId);
  return { reply, load_s: (t1 - t0) / 1000, chat_s: (t2 - t1) / 1000 };
}"""


class CorsHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the CORS header a hub sends (the page is on another origin)."""

    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub():
    """The requantized files (made now if not cached), served from their cache folder on 127.0.0.1."""
    files = {ftype: kquant_path(ftype) for ftype in BROWSER_FTYPES}
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(CorsHandler, directory=str(cache_dir()))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", files
    httpd.shutdown()
    httpd.server_close()


def model_id(ftype: str) -> str:
    return f"SmolLM2-135M-Instruct-{ftype}"


def desktop_greedy(path, prompt_ids: list[int], n: int, gpu_device):
    """Our greedy ids and each one's log-probability on the desktop (lavapipe, f32 tier). Run on a thread of its own:
    Playwright's sync API keeps an event loop running on this one."""
    from tests.e2e.conftest import E2E_TIERS
    from tests.e2e.stepper import greedy_steps
    from webllm_py.engine import load_engine

    def run():
        import asyncio

        engine = asyncio.run(
            load_engine(
                path.stem, str(path), device=gpu_device, tier=E2E_TIERS[0], context_window_size=CONTEXT
            )
        )
        try:
            return greedy_steps(engine, prompt_ids, n)
        finally:
            asyncio.run(engine.unload())

    with ThreadPoolExecutor(1) as pool:
        tokens, logits = pool.submit(run).result()
    logprobs = []
    for tok, lg in zip(tokens, logits, strict=True):
        x = lg.astype(np.float64)
        logprobs.append(float(x[tok] - x.max() - np.log(np.exp(x - x.max()).sum())))
    return tokens, logprobs


def test_each_kquant_file_chats_in_chromium_as_transformers_and_the_desktop(
    server, browser_context, hub, gpu_device
):
    from webllm_py.model.gguf import GGUFFile
    from webllm_py.tokenizer import Tokenizer

    base, files = hub
    app_config = {
        "model_list": [
            {
                "model_id": model_id(ftype),
                "model_url": base + path.name,
                "size": RECORD["files"][ftype]["bytes"],
                "sha256": RECORD["files"][ftype]["sha256"],
                "context_window_size": CONTEXT,
            }
            for ftype, path in files.items()
        ]
    }
    page = browser_context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.route(
        f"**/{PAGE}", lambda route: route.fulfill(status=200, content_type="text/html", body=PAGE_HTML)
    )
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.goto(server.url + PAGE)
    timings = {}
    try:
        for ftype, path in files.items():
            golden = next(c for c in RECORD["files"][ftype]["chats"] if c["name"] == CHAT)
            assert golden["stop_token"] is not None and min(golden["top2_margin"]) >= 0.25, golden["name"]
            want = golden["greedy_ids"][:-1]  # the end of turn is not part of the reply
            with GGUFFile.open(path) as g:
                tok = Tokenizer.from_gguf(g.metadata)

            t0 = time.perf_counter()
            out = page.evaluate(
                CHAT_JS,
                {
                    "appConfig": app_config,
                    "modelId": model_id(ftype),
                    "request": {
                        "messages": golden["messages"],
                        "temperature": 0,
                        "max_tokens": MAX_TOKENS,
                        "logprobs": True,
                    },
                },
            )
            timings[ftype] = {"browser_s": round(time.perf_counter() - t0, 1)}
            timings[ftype].update(load_s=round(out["load_s"], 1), chat_s=round(out["chat_s"], 1))
            reply = out["reply"]
            choice = reply["choices"][0]
            pieces = [bytes(t["bytes"]) for t in choice["logprobs"]["content"]]

            # 1. transformers' greedy reply, ended by the model
            assert pieces == [tok.token_bytes(i) for i in want], (ftype, choice["message"]["content"])
            assert choice["message"]["content"] == tok.decode(want)
            assert choice["finish_reason"] == "stop"
            assert reply["usage"]["prompt_tokens"] == len(golden["prompt_ids"])

            # 2. the desktop engine's ids on the same prompt; 3. the same log-probabilities
            t0 = time.perf_counter()
            ids, logprobs = desktop_greedy(path, golden["prompt_ids"], len(golden["greedy_ids"]), gpu_device)
            timings[ftype]["desktop_s"] = round(time.perf_counter() - t0, 1)
            assert ids == golden["greedy_ids"], ftype
            browser_lp = [t["logprob"] for t in choice["logprobs"]["content"]]
            diff = max(abs(a - b) for a, b in zip(browser_lp, logprobs[: len(want)], strict=True))
            assert diff <= LOGPROB_TOL, (ftype, browser_lp, logprobs[: len(browser_lp)])
            timings[ftype]["logprob_diff"] = float(f"{diff:.2e}")
    finally:
        print("kquant chat timings:", timings)
        page.close()
