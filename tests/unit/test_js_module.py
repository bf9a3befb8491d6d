"""web/webllm_py.js's WebLLM drop-in names in Node, against the real Python handler (tests/unit/test_worker_client.py
drives the same way): the page's MLCEngine / CreateMLCEngine starting its own worker, abort-reload, multi-model
calls, forwardTokensAndSample, synchronous setters, typed errors as classes in Python's hierarchy, SRI helpers, the
prebuilt app config, and a worker that fails to start saying why.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil

import pytest

from tests.unit import test_worker_handler as handler_tests
from tests.unit.test_worker_client import drive_node
from tests.unit.test_worker_handler import ALPHABET, run
from webllm_py import errors
from webllm_py.api.mlc_engine import MLCEngine
from webllm_py.config import AppConfig, ModelRecord, prebuilt_app_config
from webllm_py.worker.handler import WorkerHandler

world = handler_tests.world  # two fake models behind a real MLCEngine
pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js (apt-get install nodejs)")

DRIVER = r"""
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
const webllm = await import(pathToFileURL(process.argv[2]).href);

// Every Worker the module starts is a pipe to the Python test: one JSON message per line on stdout / stdin.
const workers = [];
globalThis.Worker = class extends EventTarget {
  constructor(url, options) {
    super();
    this.url = String(url);
    this.options = options;
    workers.push(this);
    if (this.url.includes("missing")) setTimeout(() => this.dispatchEvent(new Event("error")), 1);
    if (this.url.includes("crashes")) {
      const event = Object.assign(new Event("error"), { message: "Uncaught TypeError: x is not a function",
                                                        filename: "crashes.js", lineno: 3, colno: 7 });
      setTimeout(() => this.dispatchEvent(event), 1);
    }
  }
  postMessage(message) {  // the failing workers below never answer
    if (!/missing|crashes/.test(this.url)) process.stdout.write("MSG " + JSON.stringify(message) + "\n");
  }
  terminate() { this.terminated = true; }
};
createInterface({ input: process.stdin }).on("line", (line) =>
  workers.at(-1).dispatchEvent(new MessageEvent("message", { data: JSON.parse(line) })));
const warnings = [];
console.warn = (...args) => warnings.push(args.join(" "));
const out = {};
const caught = async (f) => { try { await f(); return "no error"; } catch (e) {
  return { name: e.name, field: e.field, message: e.message, typed: e instanceof webllm.WebLLMError }; } };
const messages = [{ role: "user", content: "Hi" }];

// The page's engine starts its own worker, next to the module.
const progress = [];
const engine = await webllm.CreateMLCEngine("fake-model", { initProgressCallback: (r) => progress.push(r.progress),
                                                           logLevel: "INFO" }, { context_window_size: 512 });
out.worker = { url: workers[0].url, type: workers[0].options.type, engineURL: engine.workerURL };
out.modelId = engine.modelId;
out.progress = progress;
out.reply = (await engine.chat.completions.create({ messages, n: 2, max_tokens: 3 })).choices.length;

// Multi-model: routing by `model`, per-model getMessage / runtimeStatsText / resetChat.
await engine.reload(["fake-model", "other-model"]);
out.models = engine.modelId;
const other = await engine.chat.completions.create({ messages, model: "other-model", max_tokens: 2 });
out.perModel = { fake: await engine.getMessage("fake-model"), other: await engine.getMessage("other-model"),
                 reply: other.choices[0].message.content, stats: await engine.runtimeStatsText("other-model"),
                 unclear: await caught(() => engine.getMessage()) };
await engine.resetChat(false, "other-model");
out.afterReset = await engine.getMessage("other-model");

// The low-level loop of the logit-processor example.
await engine.reload("fake-model");
const first = await engine.forwardTokensAndSample([42], true);
out.forward = [first, await engine.forwardTokensAndSample([first], false)];

// Abort-reload: unload() during reload(); the reload resolves, with a warning, and loads nothing.
const pending = engine.reload("slow-model");
await new Promise((r) => setTimeout(r, 50));
await engine.unload();
out.aborted = { resolved: (await pending) === undefined, modelId: engine.modelId ?? null,
                warned: warnings.some((w) => w.includes("was aborted")) };

// Synchronous setters, as WebLLM's; an app config the worker refuses fails the next call, typed.
out.setters = { appConfig: engine.setAppConfig({ model_list: [{ model_id: "x" }] }),
                logLevel: engine.setLogLevel("DEBUG"), badLevel: await caught(() => engine.setLogLevel("LOUD")) };
out.refusedConfig = await caught(() => engine.reload("fake-model"));
engine.terminate();

out.registry = await caught(() => new webllm.MLCEngine({ logitProcessorRegistry: new Map([["m", {}]]) }));
out.embeddings = await caught(() => new webllm.MLCEngine().embeddings.create({ input: "x" }));

// A worker that does not start, and one that throws, say why.
out.missing = await caught(() => webllm.CreateMLCEngine("fake-model", { workerURL: "http://127.0.0.1:9/missing.js" }));
out.crashes = await caught(() => webllm.CreateMLCEngine("fake-model", { workerURL: "http://127.0.0.1:9/crashes.js" }));

// Errors are classes, in webllm_py/errors.py's hierarchy.
const parents = {};
for (const [name, value] of Object.entries(webllm)) {
  if (typeof value === "function" && value.prototype instanceof Error && value !== webllm.WebLLMError) {
    parents[name] = Object.getPrototypeOf(value).name;
  }
}
out.parents = parents;
const integrity = new webllm.IntegrityError("m", { url: "u", expected: "e", actual: "a" });
out.classes = { same: webllm.errorClass("IntegrityError") === webllm.IntegrityError,
                chain: [integrity instanceof webllm.ModelIntegrityError, integrity instanceof webllm.ModelDownloadError,
                        integrity instanceof webllm.WebLLMError, integrity instanceof Error],
                name: integrity.name, url: integrity.url };

// SRI helpers (SHA-256 of "abc").
const ABC = "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";
const bytes = new TextEncoder().encode("abc");
out.sri = { valid: [ABC, "sha384-" + "A".repeat(64), "sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk=", "sha256-AAAA", ""]
              .map(webllm.isValidSRI),
            ok: await webllm.verifyIntegrity(bytes, ABC, "u") === undefined,
            bad: await caught(() => webllm.verifyIntegrity(new TextEncoder().encode("abd"), ABC, "https://x/m.gguf")),
            warned: (await webllm.verifyIntegrity(bytes.subarray(1), ABC, "w", "warn")) === undefined &&
                    warnings.some((w) => w.includes("Integrity check of w failed")) };
const bad = await webllm.verifyIntegrity(new TextEncoder().encode("abd"), ABC, "https://x/m.gguf").catch((e) => e);
out.sriError = { url: bad.url, expected: bad.expected, actual: bad.actual };

// The prebuilt app config and WebLLM's constants.
out.prebuilt = { ids: webllm.prebuiltAppConfig.model_list.map((r) => r.model_id),
                 sameURLs: webllm.prebuiltAppConfig.model_list.every((r) => r.model === r.model_url),
                 backend: webllm.prebuiltAppConfig.cacheBackend, fc: webllm.functionCallingModelIds,
                 version: webllm.modelVersion, prefix: webllm.modelLibURLPrefix, llm: webllm.ModelType.LLM,
                 vlm: webllm.ModelType[2] };
out.unknownModel = await caught(() => webllm.hasModelInCache("nope"));
process.stdout.write("RESULT " + JSON.stringify(out) + "\n");
process.exit(0);
"""


def python_parents() -> dict[str, str]:
    out = {}
    for name, cls in vars(errors).items():
        if inspect.isclass(cls) and issubclass(cls, errors.WebLLMError) and cls is not errors.WebLLMError:
            if name.startswith("_"):
                continue
            parent = next(
                b
                for b in cls.__mro__[1:]
                if b.__module__ == errors.__name__ and not b.__name__.startswith("_")
            )
            out[name] = parent.__name__
    return out


def test_webllm_names_in_node(world, tmp_path):
    world.knobs.script = ALPHABET
    config = AppConfig(
        model_list=[*world.config.model_list, ModelRecord("slow-model", world.config.model_list[0].model_url)]
    )

    async def resolve(record, app_config, progress):
        if record.model_id == "slow-model":
            await asyncio.sleep(3600)  # a long download, aborted by unload()
        return record.model_url

    driver = tmp_path / "driver.mjs"
    driver.write_text(DRIVER)
    out, sent = run(
        drive_node(
            driver, lambda post: WorkerHandler(MLCEngine(app_config=config, resolve_model=resolve), post)
        )
    )
    assert out["worker"]["url"].endswith("/site/worker.js") and out["worker"]["type"] == "module"
    assert out["worker"]["engineURL"] == out["worker"]["url"]
    assert out["modelId"] == ["fake-model"] and out["progress"][-1] == 1 and out["reply"] == 2
    assert [m for m in sent if m["kind"] == "setLogLevel"][0]["content"] == "INFO"
    assert sent[1]["kind"] == "reload" and sent[1]["content"]["chatOpts"] == {"context_window_size": 512}
    assert out["models"] == ["fake-model", "other-model"]
    per_model = out["perModel"]
    assert per_model["fake"] == "" and per_model["other"] == per_model["reply"] == "ab"
    assert per_model["stats"].startswith("prefill: ")
    assert per_model["unclear"]["name"] == "UnclearModelToUseError" and per_model["unclear"]["typed"]
    assert out["afterReset"] == ""
    first, second = out["forward"]
    assert (
        isinstance(first, int) and first == second
    )  # the fake model says its script's first token each time
    assert out["aborted"] == {"resolved": True, "modelId": None, "warned": True}
    # both setters returned undefined (JSON drops it): synchronous, nothing to await
    assert (
        set(out["setters"]) == {"badLevel"} and out["setters"]["badLevel"]["name"] == "UnsupportedFieldError"
    )
    assert out["refusedConfig"]["name"] == "InvalidAppConfigError"
    assert out["refusedConfig"]["field"] == "appConfig.model_list[0].model_url"
    assert (
        out["registry"]["name"] == "UnsupportedFieldError"
        and out["registry"]["field"] == "logitProcessorRegistry"
    )
    assert out["embeddings"]["name"] == "UnsupportedEndpointError"
    missing = out["missing"]
    assert missing["name"] == "WorkerError" and "missing.js did not start" in missing["message"], missing
    assert "fetching it failed" in missing["message"]
    crashes = out["crashes"]
    assert crashes["name"] == "WorkerError" and "x is not a function (crashes.js:3:7)" in crashes["message"]
    # every Python error class is a JS class with the same parent
    assert out["parents"] == python_parents()
    assert out["classes"] == {"same": True, "chain": [True] * 4, "name": "IntegrityError", "url": "u"}
    assert out["sri"]["valid"] == [True, True, False, False, False]
    assert out["sri"]["ok"] and out["sri"]["warned"]
    assert out["sri"]["bad"]["name"] == "IntegrityError"
    assert out["sriError"]["url"] == "https://x/m.gguf" and out["sriError"]["actual"].startswith("sha256-")
    prebuilt = out["prebuilt"]
    assert prebuilt["ids"] == [r.model_id for r in prebuilt_app_config.model_list]
    assert prebuilt["sameURLs"] and prebuilt["backend"] == "cache" and prebuilt["fc"] == []
    assert prebuilt["version"] == "v0_2_83/base" and prebuilt["prefix"].startswith(
        "https://raw.githubusercontent.com/"
    )
    assert (prebuilt["llm"], prebuilt["vlm"]) == (0, "VLM")
    assert out["unknownModel"]["name"] == "ModelNotFoundError"
    json.dumps(out)  # plain data
