// webllm_py's page-side engine for JS pages: WebLLM's WebWorkerMLCEngine API over our Python engine in a worker.
//
//   import { CreateWebWorkerMLCEngine } from "./webllm_py.js";      // was: from "@mlc-ai/web-llm"
//   const engine = await CreateWebWorkerMLCEngine(
//     new Worker(new URL("./worker.js", import.meta.url), { type: "module" }),
//     "SmolLM2-135M-Instruct-Q4_1",
//     { initProgressCallback: (report) => console.log(report.progress, report.text) },
//   );
//   const chunks = await engine.chat.completions.create({ messages, stream: true,
//                                                         stream_options: { include_usage: true } });
//   for await (const chunk of chunks) out.textContent += chunk.choices[0]?.delta.content ?? "";
//
// The wire protocol is webllm_py/worker/messages.py (its table lists every kind and its content); this file is the
// twin of webllm_py/worker/client.py. Streams are pulled one chunk per request, as in WebLLM. Differences from
// WebLLM, on purpose:
//   - Errors thrown in the worker are Error subclasses whose `name` is the Python class (error.name ===
//     "InvalidRangeError"), with the error's fields (`field`, `value`, `allowed`...) as properties. All of them
//     are `instanceof WebLLMError`. WebLLM rejects with a string.
//   - Leaving `for await` early (break, return, throw) ends that stream in the worker at once and frees the engine
//     for the next request; WebLLM keeps the model locked until the stream is drained (mlc-ai/mlc-llm#3113).
//   - If the worker dies (an uncaught error, a message that cannot be cloned) or terminate() is called, every
//     pending call rejects with WorkerError instead of waiting forever.
//   - `reload(modelId)` takes one id or a list (several models loaded, requests routed by `model`).

const RELOAD_HEARTBEAT_FACTOR = 4; // more missed heartbeats tolerated while a model loads (service_worker_client.py too)
const LOG_LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "SILENT"];

/** Base class of every error the engine throws; `name` is the Python class name. */
export class WebLLMError extends Error {
  constructor(message, details) {
    super(message);
    if (details) Object.assign(this, details);
  }
}

const errorClasses = new Map();

/** The Error subclass for a Python error class name (created on first use, then the same class every time). */
export function errorClass(name) {
  let cls = errorClasses.get(name);
  if (!cls) {
    cls = { [name]: class extends WebLLMError {} }[name];
    Object.defineProperty(cls.prototype, "name", { value: name, configurable: true, writable: true });
    errorClasses.set(name, cls);
  }
  return cls;
}

/** The error a `throw` reply stands for: {name, message, details} -> an instance of errorClass(name). */
export function errorFromContent(content) {
  if (content === null || typeof content !== "object") {
    return new (errorClass("WorkerError"))(`the worker threw ${String(content)}`);
  }
  const { stack, ...details } = content.details || {};
  const error = new (errorClass(content.name || "Error"))(content.message || "", details);
  if (stack) error.workerStack = stack; // the Python traceback, for errors that are bugs
  return error;
}

let counter = 0;
function newUUID() {
  // crypto.randomUUID exists only in secure contexts (https, localhost); a page on a LAN address has none.
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === "function") return globalThis.crypto.randomUUID();
  counter += 1;
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${counter}`;
}

function hasFinishReason(chunk) {
  return Array.isArray(chunk.choices) && chunk.choices.some((c) => c && c.finish_reason);
}

function oneModelId(modelId) {
  if (Array.isArray(modelId)) {
    if (modelId.length !== 1) {
      throw new (errorClass("UnsupportedFieldError"))(
        `\`modelId\` is not supported (one model per engine); got ${JSON.stringify(modelId)}`,
        { field: "modelId", value: modelId },
      );
    }
    return modelId[0];
  }
  return modelId;
}

function absoluteModelURLs(appConfig) {
  const base = globalThis.location && globalThis.location.href;
  if (!base || !appConfig || !Array.isArray(appConfig.model_list)) return appConfig;
  const modelList = appConfig.model_list.map((record) => {
    const copy = { ...record };
    for (const key of ["model_url", "model"]) {
      if (typeof copy[key] === "string") copy[key] = new URL(copy[key], base).href;
    }
    return copy;
  });
  return { ...appConfig, model_list: modelList };
}

/** WebLLM's WebWorkerMLCEngine: the MLCEngine API, served by webllm_py's engine in a Web Worker. */
export class WebWorkerMLCEngine {
  /**
   * @param worker a module Worker started from webllm_py's worker.js (anything with postMessage and
   *               addEventListener("message") works, e.g. a MessagePort).
   * @param engineConfig {initProgressCallback?, appConfig?, logLevel?}
   */
  constructor(worker, engineConfig = {}) {
    this.worker = worker;
    this.modelId = undefined; // the model loaded for us; sent with each request so a restarted worker reloads it
    this.chatOpts = undefined;
    this.initProgressCallback = engineConfig.initProgressCallback;
    this.pending = new Map(); // uuid -> {resolve, reject}
    this.terminated = null;
    this.chat = { completions: { create: (request) => this.chatCompletion(request) } };
    this.completions = { create: (request) => this.completion(request) };
    this.embeddings = {
      create: async () => {
        throw new (errorClass("UnsupportedEndpointError"))("embeddings are not implemented by webllm_py yet");
      },
    };
    this.onmessage = this.onmessage.bind(this);
    this.onerror = this.onerror.bind(this);
    worker.addEventListener("message", this.onmessage);
    worker.addEventListener("error", this.onerror);
    worker.addEventListener("messageerror", this.onerror);
    // Posted now, so they reach the worker before any later request; their errors surface on the next call.
    this.setup = [];
    if (engineConfig.appConfig) this.setup.push(this.send("setAppConfig", absoluteModelURLs(engineConfig.appConfig)));
    if (engineConfig.logLevel) this.setup.push(this.send("setLogLevel", engineConfig.logLevel));
    if (engineConfig.logitProcessorRegistry) {
      console.warn("webllm_py: logitProcessorRegistry is not supported and is ignored");
    }
  }

  // ---- transport ----------------------------------------------------------------------------------------------

  send(kind, content, uuid = newUUID()) {
    if (this.terminated) return Promise.reject(this.terminated);
    return new Promise((resolve, reject) => {
      this.pending.set(uuid, { resolve, reject });
      try {
        this.worker.postMessage({ kind, uuid, content: content === undefined ? null : content });
      } catch (error) {
        // DataCloneError: something in the request cannot cross postMessage (a function, a DOM node...)
        this.pending.delete(uuid);
        reject(error);
      }
    });
  }

  async call(kind, content, uuid) {
    while (this.setup.length) await this.setup.shift();
    return this.send(kind, content, uuid);
  }

  postNoReply(kind, content) {
    if (!this.terminated) this.worker.postMessage({ kind, uuid: newUUID(), content: content ?? null });
  }

  onmessage(event) {
    const message = event.data;
    if (message === null || typeof message !== "object") return;
    const { kind, uuid, content } = message;
    if (kind === "initProgressCallback") {
      if (this.initProgressCallback && content) {
        try {
          this.initProgressCallback(content);
        } catch (error) {
          console.error("initProgressCallback threw", error);
        }
      }
      return;
    }
    const waiter = this.pending.get(uuid);
    if (!waiter) {
      // A throw without a uuid: the worker refused a message it could not tell the uuid of (not one of ours).
      if (kind === "throw" && !uuid) console.error("webllm_py: the worker refused a message:", errorFromContent(content));
      return; // else the reply to a request nobody waits for (interruptGenerate, an ended stream)
    }
    this.pending.delete(uuid);
    if (kind === "return") waiter.resolve(content ?? null);
    else if (kind === "throw") waiter.reject(errorFromContent(content));
    else waiter.reject(new (errorClass("UnknownMessageKindError"))(`unexpected reply kind ${String(kind)}`));
  }

  onerror(event) {
    const message = (event && event.message) || `the worker raised a ${event && event.type} event`;
    this.failPending(new (errorClass("WorkerError"))(message));
  }

  failPending(error) {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const waiter of pending) waiter.reject(error);
  }

  /** Stop the worker; calls still waiting reject with WorkerError, and so do later ones. */
  terminate() {
    if (this.terminated) return;
    this.terminated = new (errorClass("WorkerError"))("the worker was terminated");
    this.failPending(this.terminated);
    this.worker.removeEventListener("message", this.onmessage);
    this.worker.removeEventListener("error", this.onerror);
    this.worker.removeEventListener("messageerror", this.onerror);
    if (typeof this.worker.terminate === "function") this.worker.terminate();
  }

  // ---- loading ------------------------------------------------------------------------------------------------

  setInitProgressCallback(callback) {
    this.initProgressCallback = callback;
  }

  getInitProgressCallback() {
    return this.initProgressCallback;
  }

  /** Load a model, or several (a list of ids); progress goes to initProgressCallback. chatOpts (one object, or
   *  one per id): {context_window_size?, chat_template?} and the model's sampling defaults {temperature?, top_p?,
   *  presence_penalty?, frequency_penalty?, repetition_penalty?}, which a request's own values override. */
  async reload(modelId, chatOpts) {
    const ids = Array.isArray(modelId) ? modelId : [modelId];
    await this.call("reload", { modelId: ids, chatOpts: chatOpts ?? null });
    this.modelId = ids.length === 1 ? ids[0] : ids;
    this.chatOpts = chatOpts ?? undefined;
  }

  async unload() {
    await this.call("unload", null);
    this.modelId = undefined;
    this.chatOpts = undefined;
  }

  // ---- requests -----------------------------------------------------------------------------------------------

  modelContent(request) {
    return {
      request,
      modelId: this.modelId === undefined ? null : [].concat(this.modelId),
      chatOpts: this.chatOpts ?? null,
    };
  }

  /** WebLLM's engine.chatCompletion: a ChatCompletion, or (stream: true) an async iterable of chunks. */
  async chatCompletion(request) {
    return this.generate(request, "chatCompletionStreamInit", "chatCompletionNonStreaming");
  }

  /** Text completion; the worker throws UnsupportedEndpointError while the engine does not implement it. */
  async completion(request) {
    return this.generate(request, "completionStreamInit", "completionNonStreaming");
  }

  async generate(request, streamKind, wholeKind) {
    if (request && request.stream) {
      const streamId = newUUID(); // the init request's uuid names the stream
      await this.call(streamKind, this.modelContent(request), streamId);
      return this.pull(streamId);
    }
    return this.call(wholeKind, this.modelContent(request));
  }

  /** The stream's chunks, one completionStreamNextChunk request each; leaving early ends it in the worker. */
  async *pull(streamId) {
    let done = false; // the worker has nothing more, or the chunk with finish_reason came (the engine is free)
    try {
      while (true) {
        const chunk = await this.call("completionStreamNextChunk", { streamId });
        if (chunk === null || typeof chunk !== "object") {
          done = true;
          return;
        }
        if (hasFinishReason(chunk)) done = true;
        yield chunk;
      }
    } catch (error) {
      done = true; // an error from the worker ends the stream there too
      throw error;
    } finally {
      if (!done) this.postNoReply("interruptGenerate", { streamId });
    }
  }

  // ---- WebLLM's other engine methods --------------------------------------------------------------------------

  /** End the running generation at its next token with finish_reason "abort" (not awaited, as in WebLLM). */
  interruptGenerate() {
    this.postNoReply("interruptGenerate", null);
  }

  async resetChat(keepStats = false) {
    await this.call("resetChat", { keepStats });
  }

  async getMessage() {
    return this.call("getMessage", {});
  }

  async runtimeStatsText() {
    return this.call("runtimeStatsText", {});
  }

  async getGPUVendor() {
    return this.call("getGPUVendor", null);
  }

  async getMaxStorageBufferBindingSize() {
    return this.call("getMaxStorageBufferBindingSize", null);
  }

  async setLogLevel(logLevel) {
    if (!LOG_LEVELS.includes(logLevel)) {
      throw new (errorClass("UnsupportedFieldError"))(`log level must be one of ${LOG_LEVELS.join(", ")}`, {
        field: "logLevel",
        value: logLevel,
      });
    }
    await this.call("setLogLevel", logLevel);
  }

  /** Replace the worker's model list: {model_list: [{model_id, model_url (or WebLLM's `model`), ...}]}. Relative
   *  model URLs are made absolute against this page, as WebLLM does (the worker would resolve them against
   *  worker.js otherwise). */
  async setAppConfig(appConfig) {
    await this.call("setAppConfig", absoluteModelURLs(appConfig));
  }

  /** The worker's app config, e.g. to fill a model picker (a webllm_py addition). */
  async getAppConfig() {
    return this.call("getAppConfig", null);
  }

  async hasModelInCache(modelId) {
    return this.call("hasModelInCache", { modelId: oneModelId(modelId) });
  }

  async deleteModelInCache(modelId) {
    await this.call("deleteModelInCache", { modelId: oneModelId(modelId) });
  }
}

/** WebLLM's CreateWebWorkerMLCEngine: a WebWorkerMLCEngine over `worker`, with `modelId` loaded. */
export async function CreateWebWorkerMLCEngine(worker, modelId, engineConfig = {}, chatOpts) {
  const engine = new WebWorkerMLCEngine(worker, engineConfig);
  await engine.reload(modelId, chatOpts);
  return engine;
}

// ---- service worker host (sw.js) ------------------------------------------------------------------------------------

/** navigator.serviceWorker as the Worker-like object WebWorkerMLCEngine talks through. Requests go to the page's
 *  controller, or to the registration's active worker on a page it does not control yet (first visit, hard reload);
 *  replies come back as messages on navigator.serviceWorker. */
class ServiceWorkerTransport {
  constructor(container, registration) {
    this.container = container;
    this.registration = registration;
  }

  postMessage(message) {
    const worker = this.container.controller || this.registration.active;
    if (!worker) {
      throw new (errorClass("EngineLostError"))(
        "there is no active service worker: register sw.js (navigator.serviceWorker.register('./sw.js', " +
          "{ type: 'module' })) and await navigator.serviceWorker.ready before creating the engine",
      );
    }
    worker.postMessage(message);
  }

  addEventListener(type, listener) {
    if (type === "message") this.container.addEventListener("message", listener);
  }

  removeEventListener(type, listener) {
    if (type === "message") this.container.removeEventListener("message", listener);
  }
}

/** WebLLM's ServiceWorkerMLCEngine: the engine runs in the origin's service worker (sw.js) and is shared by its
 *  tabs. Every keepAliveMs the engine sends keepAlive; the worker answers heartbeat with the requests it holds for
 *  this tab. A request sent before a keepAlive whose heartbeat does not list it was lost with a worker the browser
 *  stopped: it rejects with EngineLostError (send it again: the worker restarts and reloads the model). After
 *  engineConfig.maxMissedHeartbeats (default 3) keepAlives without an answer (four times as many while a reload is
 *  pending: a model load holds the worker's thread in stretches), every pending call rejects with EngineLostError and
 *  engineConfig.onEngineLost(error) is called. WebLLM only counts missed heartbeats. */
export class ServiceWorkerMLCEngine extends WebWorkerMLCEngine {
  constructor(engineConfig = {}, keepAliveMs = 10000, registration = null, transport = null) {
    super(transport || new ServiceWorkerTransport(navigator.serviceWorker, registration || {}), engineConfig);
    if (!transport) navigator.serviceWorker.startMessages();
    this.missedHeartbeat = 0;
    this.maxMissedHeartbeats = engineConfig.maxMissedHeartbeats ?? 3;
    this.onEngineLost = engineConfig.onEngineLost;
    // (the base constructor may already have sent setAppConfig / setLogLevel through send() below)
    this.sent = this.sent || 0; // requests sent so far; each pending one remembers its number
    this.sentNumber = this.sentNumber || new Map(); // uuid of a pending request -> its number
    this.reloads = this.reloads || new Set(); // uuids of pending reloads
    this.beats = new Map(); // uuid of a keepAlive not answered yet -> requests sent before it
    this.lostSince = 0; // when missed heartbeats made us report the engine lost (0: not lost)
    this.keepAliveTimer = setInterval(() => this.keepAlive(), keepAliveMs);
  }

  send(kind, content, uuid = newUUID()) {
    this.sentNumber = this.sentNumber || new Map();
    this.reloads = this.reloads || new Set();
    this.sent = (this.sent || 0) + 1;
    this.sentNumber.set(uuid, this.sent);
    if (kind === "reload") this.reloads.add(uuid);
    const promise = super.send(kind, content, uuid);
    const forget = () => {
      this.sentNumber.delete(uuid);
      this.reloads.delete(uuid);
    };
    promise.then(forget, forget);
    return promise;
  }

  keepAlive() {
    if (this.terminated) return;
    if (this.beats.size) {
      this.missedHeartbeat += 1;
      const limit = this.maxMissedHeartbeats * (this.reloads && this.reloads.size ? RELOAD_HEARTBEAT_FACTOR : 1);
      if (this.missedHeartbeat >= limit) {
        this.beats.clear();
        this.lose(`the service worker did not answer ${this.missedHeartbeat} heartbeats`);
      }
    }
    const uuid = newUUID();
    this.beats.set(uuid, this.sent);
    try {
      this.worker.postMessage({ kind: "keepAlive", uuid, content: null });
    } catch (error) {
      this.beats.delete(uuid);
      this.lose(error.message);
    }
  }

  lose(reason) {
    const error = new (errorClass("EngineLostError"))(
      `the service worker serving this engine is gone (${reason}); the next request starts it again`,
    );
    this.failPending(error);
    if (this.lostSince) return; // reported once until a heartbeat comes back
    this.lostSince = Date.now();
    this.reportLost(error);
  }

  reportLost(error) {
    if (!this.onEngineLost) return;
    try {
      this.onEngineLost(error);
    } catch (e) {
      console.error("onEngineLost threw", e);
    }
  }

  onmessage(event) {
    const message = event.data;
    if (!message || message.kind !== "heartbeat") return super.onmessage(event);
    const before = this.beats.get(message.uuid);
    if (before === undefined) return; // another tab's, or an answer that came too late
    this.beats.delete(message.uuid);
    this.missedHeartbeat = 0;
    this.lostSince = 0;
    const held = new Set((message.content && message.content.pending) || []);
    const lost = [...this.sentNumber].filter(([uuid, n]) => n <= before && !held.has(uuid) && this.pending.has(uuid));
    if (!lost.length) return;
    const error = new (errorClass("EngineLostError"))(
      "the browser stopped the service worker while it held this request; send it again (the worker restarts " +
        "and reloads the model from the cache)",
    );
    for (const [uuid] of lost) {
      const waiter = this.pending.get(uuid);
      this.pending.delete(uuid);
      waiter.reject(error);
    }
    this.reportLost(error);
  }

  /** Stop the keep-alive; calls still waiting reject. The service worker (shared with other tabs) keeps running. */
  terminate() {
    clearInterval(this.keepAliveTimer);
    super.terminate();
  }
}

/** WebLLM's CreateServiceWorkerMLCEngine: the engine of the origin's service worker (registered by the page from
 *  webllm_py's sw.js), with `modelId` loaded; a model already loaded there with the same options is not loaded
 *  again. engineConfig adds {onEngineLost, maxMissedHeartbeats} to WebWorkerMLCEngine's. */
export async function CreateServiceWorkerMLCEngine(modelId, engineConfig = {}, chatOpts, keepAliveMs = 10000) {
  if (!("serviceWorker" in navigator)) {
    throw new (errorClass("EngineLostError"))(
      "this page has no service workers (navigator.serviceWorker is missing): serve it over https or localhost",
    );
  }
  const registration = await navigator.serviceWorker.ready;
  const engine = new ServiceWorkerMLCEngine(engineConfig, keepAliveMs, registration);
  await engine.reload(modelId, chatOpts);
  return engine;
}

// ---- Chrome extension service worker host (extension/background.js) -------------------------------------------------

/** A chrome.runtime Port to the extension's service worker as a Worker-like object. A port that disconnects (the
 *  browser stopped the worker, or it crashed) is reconnected by the next request, which starts the worker again. */
class ExtensionPortTransport {
  constructor(extensionId, onDisconnect) {
    this.extensionId = extensionId;
    this.onDisconnect = onDisconnect;
    this.listeners = new Set();
    this.port = null;
  }

  connect() {
    const options = { name: "web_llm_service_worker" };
    const port = this.extensionId ? chrome.runtime.connect(this.extensionId, options) : chrome.runtime.connect(options);
    port.onMessage.addListener((data) => {
      for (const listener of this.listeners) listener({ data });
    });
    port.onDisconnect.addListener(() => {
      if (this.port === port) this.port = null;
      this.onDisconnect(chrome.runtime.lastError?.message || "the port disconnected");
    });
    this.port = port;
  }

  postMessage(message) {
    if (!this.port) this.connect();
    this.port.postMessage(message);
  }

  addEventListener(type, listener) {
    if (type === "message") this.listeners.add(listener);
  }

  removeEventListener(type, listener) {
    if (type === "message") this.listeners.delete(listener);
  }

  terminate() {
    if (this.port) this.port.disconnect();
    this.port = null;
  }
}

/** WebLLM's ExtensionServiceWorkerMLCEngine, for an extension's popup and pages: the engine in the extension's
 *  service worker, over a chrome.runtime Port. Heartbeats as in ServiceWorkerMLCEngine; a port that disconnects
 *  fails the pending calls with EngineLostError and calls engineConfig.onDisconnect (WebLLM's) and onEngineLost. */
export class ExtensionServiceWorkerMLCEngine extends ServiceWorkerMLCEngine {
  constructor(engineConfig = {}, keepAliveMs = 10000) {
    let engine = null;
    const transport = new ExtensionPortTransport(engineConfig.extensionId, (reason) => {
      if (!engine || engine.terminated) return;
      engine.lose(reason);
      if (engineConfig.onDisconnect) engineConfig.onDisconnect();
    });
    super(engineConfig, keepAliveMs, null, transport);
    engine = this;
  }
}

/** WebLLM's CreateExtensionServiceWorkerMLCEngine: the extension service worker's engine with `modelId` loaded (a
 *  model already loaded there with the same options is not loaded again). engineConfig adds {extensionId,
 *  onDisconnect, onEngineLost, maxMissedHeartbeats}. */
export async function CreateExtensionServiceWorkerMLCEngine(modelId, engineConfig = {}, chatOpts, keepAliveMs = 10000) {
  const engine = new ExtensionServiceWorkerMLCEngine(engineConfig, keepAliveMs);
  await engine.reload(modelId, chatOpts);
  return engine;
}
