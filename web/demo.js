// The demo chat page (index.html): a model picker fed by the worker's app config, load progress, streamed replies
// with live speed numbers, Stop (interruptGenerate) and New chat (resetChat). Everything goes through the public
// JS proxy (webllm_py.js), the same way a WebLLM page would.
//
// URL parameters: ?model=ID loads that model at once.

import { WebWorkerMLCEngine } from "./webllm_py.js";

const $ = (id) => document.getElementById(id);

// What a user can do about each error the engine may throw, by the Python class name (error.name).
const HELP = {
  WebGPUNotAvailableError:
    "This page needs WebGPU, which this browser does not offer here. Use a recent Chrome or Edge on the desktop " +
    "(version 113 or later), Safari 26, or Firefox with WebGPU enabled; open the page over https or on localhost. " +
    "On Linux, Chrome needs chrome://flags/#enable-unsafe-webgpu (and #enable-vulkan). " +
    "Check chrome://gpu: 'WebGPU: Hardware accelerated' should be listed.",
  DeviceLostError:
    "The GPU dropped the engine, most likely for lack of memory. Close other GPU-heavy tabs, or pick a smaller " +
    "model or a smaller context window, then load again.",
  DeviceLimitError: "Your GPU lacks a limit or feature this model needs; try a smaller model.",
  StorageQuotaError:
    "The browser will not store the model: there is not enough free disk space for this site. Private windows " +
    "have a small quota; use a normal window or free some space.",
  ModelDownloadError: "The model could not be downloaded. Check the network connection and try again.",
  ModelIntegrityError: "The downloaded model is corrupt (its checksum differs). It was deleted; load it again.",
  WorkerBootError:
    "The worker could not start Python. The site must serve worker.js, webllm_py.json, the pyodide/ folder and " +
    "the wheel (python3 build.py demo does).",
  WorkerError: "The engine's worker stopped. Reload the page.",
  ContextWindowSizeExceededError: "The conversation is longer than the model's context window: start a New chat.",
  EngineNotLoadedError: "Load a model first.",
};
HELP.InvalidRangeError = HELP.InvalidFieldTypeError = HELP.UnsupportedFieldError =
  "The request has a setting the engine does not accept; fix it under Settings.";

const demo = { engine: null, messages: [], generating: false, modelId: null, progress: [] };
window.webllmDemo = demo; // for the console (and the browser tests)

function setState(state) {
  document.body.dataset.state = state;
  const ready = state === "ready";
  $("prompt").disabled = !demo.modelId || state === "loading";
  $("send").disabled = !ready;
  $("stop").disabled = state !== "generating";
  $("new-chat").disabled = !demo.modelId || state === "loading";
  $("load").disabled = state === "loading" || state === "generating" || state === "starting";
  $("model").disabled = $("load").disabled;
}

function showError(error) {
  const name = (error && error.name) || "Error";
  $("error-name").textContent = name;
  $("error-message").textContent = (error && error.message) || String(error);
  $("error-help").textContent = HELP[name] || "";
  $("error").hidden = false;
  $("error").dataset.name = name;
  console.error(error);
}

function clearError() {
  $("error").hidden = true;
  delete $("error").dataset.name;
}

function onProgress(report) {
  demo.progress.push(report); // the engine's InitProgressReports, as they came
  showProgress(report);
}

function showProgress(report) {
  $("progress-row").hidden = false;
  $("progress").value = report.progress;
  $("progress-text").textContent = report.text;
}

function setStats({ prefill, decode, ttft, tokens }) {
  const show = (v, digits) => (v === undefined || v === null || Number.isNaN(v) ? "–" : v.toFixed(digits));
  $("stat-prefill").textContent = show(prefill, 1);
  $("stat-decode").textContent = show(decode, 1);
  $("stat-ttft").textContent = show(ttft, 2);
  $("stat-tokens").textContent = tokens === undefined ? "–" : String(tokens);
}

function bubble(role, text = "") {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

/** The site's webllm_py.json may list models (with URLs relative to it): offer those in the picker. */
async function applySiteConfig(engine) {
  const url = new URL("webllm_py.json", import.meta.url);
  let site;
  try {
    const response = await fetch(url);
    if (!response.ok) return;
    site = await response.json();
  } catch {
    return;
  }
  if (!site.appConfig) return;
  const appConfig = structuredClone(site.appConfig);
  for (const record of appConfig.model_list || []) {
    for (const key of ["model_url", "model"]) {
      if (record[key]) record[key] = new URL(record[key], url).href;
    }
  }
  await engine.setAppConfig(appConfig);
}

async function fillPicker(engine) {
  const config = await engine.getAppConfig();
  const select = $("model");
  select.replaceChildren();
  for (const record of config.model_list) {
    const option = document.createElement("option");
    option.value = option.textContent = record.model_id;
    select.append(option);
  }
  // Mark what is downloaded already (best effort: the cache may be unavailable, e.g. in a private window).
  for (const option of select.options) {
    engine
      .hasModelInCache(option.value)
      .then((cached) => {
        if (cached) option.textContent = `${option.value} (downloaded)`;
      })
      .catch(() => {});
  }
}

async function load() {
  const modelId = $("model").value;
  if (!modelId) return;
  clearError();
  setState("loading");
  showProgress({ progress: 0, text: `Loading ${modelId}…` });
  try {
    await demo.engine.reload(modelId);
    demo.modelId = modelId;
    $("progress-row").hidden = true;
    setState("ready");
    $("prompt").focus();
  } catch (error) {
    demo.modelId = demo.engine.modelId?.[0] ?? null; // the models loaded (a list, as WebLLM's)
    $("progress-row").hidden = true;
    showError(error);
    setState(demo.modelId ? "ready" : "error");
  }
}

function request() {
  const messages = [...demo.messages];
  const system = $("system").value.trim();
  if (system) messages.unshift({ role: "system", content: system });
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  const maxTokens = $("max-tokens").value.trim();
  if (maxTokens) body.max_tokens = Number(maxTokens);
  const temperature = $("temperature").value.trim();
  if (temperature) body.temperature = Number(temperature);
  return body;
}

async function send(event) {
  event?.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || demo.generating || !demo.modelId) return;
  clearError();
  $("prompt").value = "";
  demo.messages.push({ role: "user", content: text });
  const userBubble = bubble("user", text);
  const reply = bubble("assistant");
  demo.generating = true;
  setState("generating");
  setStats({});
  const started = performance.now();
  let firstAt = null;
  let pieces = 0;
  try {
    const chunks = await demo.engine.chat.completions.create(request());
    for await (const chunk of chunks) {
      const choice = chunk.choices[0];
      if (choice?.delta?.content) {
        reply.textContent += choice.delta.content;
        pieces += 1;
        const now = performance.now();
        if (firstAt === null) firstAt = now;
        // Live, from this page's clock (one chunk is about one token); replaced by the engine's numbers below.
        const decode = pieces > 1 ? (pieces - 1) / ((now - firstAt) / 1000) : undefined;
        setStats({ decode, ttft: (firstAt - started) / 1000, tokens: pieces });
        reply.scrollIntoView({ block: "end" });
      }
      if (choice?.finish_reason) reply.dataset.finish = choice.finish_reason;
      if (chunk.usage) {
        const x = chunk.usage.extra || {};
        setStats({
          prefill: x.prefill_tokens_per_s,
          decode: x.decode_tokens_per_s,
          ttft: x.time_to_first_token_s,
          tokens: chunk.usage.completion_tokens,
        });
      }
    }
    demo.messages.push({ role: "assistant", content: reply.textContent });
  } catch (error) {
    // The request failed as a whole: take the turn back, so the conversation stays valid for the next one.
    demo.messages.pop();
    reply.remove();
    userBubble.dataset.failed = "true";
    $("prompt").value = text;
    showError(error);
  } finally {
    demo.generating = false;
    setState("ready");
  }
}

async function newChat() {
  if (demo.generating) demo.engine.interruptGenerate();
  demo.messages = [];
  $("log").replaceChildren();
  setStats({});
  clearError();
  try {
    await demo.engine.resetChat();
  } catch (error) {
    showError(error);
  }
}

async function main() {
  setState("starting");
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) send(event);
  });
  $("stop").addEventListener("click", () => demo.engine.interruptGenerate());
  $("new-chat").addEventListener("click", newChat);
  $("load").addEventListener("click", load);

  if (!navigator.gpu) {
    // Said at once; loading a model would fail in the worker with the same typed error.
    showError({ name: "WebGPUNotAvailableError", message: "navigator.gpu is undefined in this browser." });
  }
  showProgress({ progress: 0, text: "Starting the Python worker…" });
  const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  demo.engine = new WebWorkerMLCEngine(worker, { initProgressCallback: onProgress });
  try {
    await applySiteConfig(demo.engine);
    await fillPicker(demo.engine);
  } catch (error) {
    $("progress-row").hidden = true;
    showError(error);
    setState("error");
    return;
  }
  $("progress-row").hidden = true;
  demo.engine
    .getGPUVendor()
    .then((vendor) => ($("gpu").textContent = vendor ? `GPU: ${vendor}` : ""))
    .catch((error) => {
      if (error.name === "WebGPUNotAvailableError") showError(error); // the worker's own word on it
    });
  setState("idle");
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted) {
    $("model").value = wanted;
    await load();
  }
}

main();
