"""The Python page-side proxy (webllm_py/worker/client.py) in Chromium: Pyodide on the page's main thread drives
the real worker and model (SwiftShader WebGPU), as a PyScript page does, without PyScript.

The requests and what the desktop engine answers to them are in api_reference.py; the JS proxy's twins of these
tests are in test_proxies.py. One engine for the module, a few tokens per request.
"""

from __future__ import annotations

import json

import pytest

from tests.browser import api_reference

PAGE = "__py_proxy__.html"
TIMEOUT_MS = 900_000  # SwiftShader: tens of seconds per prefill, seconds per token

# Pyodide and our wheel come from the dist/ root, as the site's webllm_py.json lists them; the worker applies the
# site's model list by itself.
PAGE_HTML = """<!doctype html><meta charset="utf-8"><title>python proxy</title>
<script type="module">
import { loadPyodide } from "./pyodide/pyodide.mjs";
window.ready = (async () => {
  const site = await (await fetch("webllm_py.json")).json();
  const pyodide = await loadPyodide({ indexURL: new URL("./pyodide/", location.href).href, packages: ["micropip"] });
  const micropip = pyodide.pyimport("micropip");
  for (const wheel of site.wheels) await micropip.install.callKwargs(new URL(wheel, location.href).href, { deps: false });
  window.pyodide = pyodide;
  return await pyodide.runPythonAsync(`
import json
import webllm_py
from js import URL, Object, Worker, location
from pyodide.ffi import to_js

worker = Worker.new(URL.new("./worker.js", location.href).href, to_js({"type": "module"}, dict_converter=Object.fromEntries))
engine = await webllm_py.CreateWebWorkerMLCEngine(worker, ${JSON.stringify(site.appConfig.model_list[0].model_id)})
engine.model_id
`);
})();
window.py = async (code) => { await window.ready; return await window.pyodide.runPythonAsync(code); };
</script>"""


@pytest.fixture(scope="module")
def py_page(server, browser_context):
    page = browser_context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.route(
        f"**/{PAGE}", lambda route: route.fulfill(status=200, content_type="text/html", body=PAGE_HTML)
    )
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.goto(server.url + PAGE)
    page.console = console
    yield page
    page.close()


def run(page, body: str, arg) -> object:
    """Run ``body`` (Python, top-level await) on the page with ``arg`` (JSON-able) bound; it sets ``out``, which
    comes back through JSON."""
    code = f"arg = json.loads({json.dumps(json.dumps(arg))})\n{body}\njson.dumps(out)"
    try:
        return json.loads(page.evaluate("code => window.py(code)", code))
    except Exception as exc:
        raise AssertionError(f"{exc}\nconsole:\n" + "\n".join(page.console[-20:])) from exc


def test_the_page_loads_the_model_through_the_worker(py_page):
    assert py_page.evaluate("() => window.ready") == "SmolLM2-135M-Instruct-Q4_1"


def test_seeded_sample_equals_the_desktop_engine(py_page):
    out = run(py_page, "out = (await engine.chat.completions.create(**arg)).to_dict()", api_reference.SEEDED)
    api_reference.check_seeded(out)


def test_logit_bias_n_and_top_logprobs(py_page):
    request, forced = api_reference.bias_request()
    out = run(py_page, "out = (await engine.chat.completions.create(**arg)).to_dict()", request)
    api_reference.check_bias(out, list(api_reference.desktop_reference()["greedy"][2][1].encode()))
    assert forced == api_reference.desktop_reference()["greedy"][2][0]


def test_stop_string_in_a_stream_with_usage(py_page):
    request, content = api_reference.stop_request()
    out = run(
        py_page,
        """
from webllm_py.api.types import ChatCompletionChunk
out = []
async for chunk in await engine.chat.completions.create(**arg):
    assert isinstance(chunk, ChatCompletionChunk), type(chunk)
    out.append(chunk.to_dict())
""",
        request,
    )
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
def test_bad_field_values_raise_typed_errors(py_page, change, name, field):
    """The worker's exception is raised on the page as the class of webllm_py.errors of the same name."""
    out = run(
        py_page,
        """
from webllm_py import errors
try:
    await engine.chat.completions.create(**arg)
    out = "no error"
except errors.InvalidRequestError as e:
    out = {"name": type(e).__name__, "field": e.field, "cls": type(e) is getattr(errors, type(e).__name__)}
""",
        {**api_reference.SEEDED, "max_tokens": 1, **change},
    )
    assert out != "no error"
    assert out["name"] == name and out["cls"] and out["field"].startswith(field), out


def test_chat_opts_at_reload_are_the_models_sampling_defaults(py_page):
    out = run(
        py_page,
        """
await engine.reload(engine.model_id, arg["chatOpts"])
out = (await engine.chat.completions.create(**arg["request"])).to_dict()
""",
        {"chatOpts": api_reference.CHAT_OPTS, "request": api_reference.SEEDED_BY_CHAT_OPTS},
    )
    api_reference.check_seeded(out)


def test_abandoned_stream_releases_the_model(py_page):
    """Issue 12's scenario in Pyodide (whose finalization is CPython's, under the browser's event loop): a task reads
    one chunk by hand and ends without closing the stream; the next request is served."""
    out = run(
        py_page,
        """
import asyncio
async def abandon():
    s = await engine.completions.create(prompt=[1], max_tokens=8, stream=True)
    await s.__anext__()
await asyncio.ensure_future(abandon())
reply = await asyncio.wait_for(engine.completions.create(prompt=[1], max_tokens=2), 600)
out = reply.choices[0].finish_reason
""",
        None,
    )
    assert out == "length"
