// webllm_py's JS module: WebLLM's API (@mlc-ai/web-llm) over our Python engine, which runs in a worker.
//
//   import * as webllm from "./webllm_py.js";                         // was: from "@mlc-ai/web-llm"
//   const engine = await webllm.CreateMLCEngine("SmolLM2-135M-Instruct-Q4_1", {
//     initProgressCallback: (report) => console.log(report.progress, report.text),
//   });
//   const chunks = await engine.chat.completions.create({ messages, stream: true,
//                                                         stream_options: { include_usage: true } });
//   for await (const chunk of chunks) out.textContent += chunk.choices[0]?.delta.content ?? "";
//
// What is here, in WebLLM's names (README "WebLLM names" lists what is not):
//   engines     MLCEngine / CreateMLCEngine (the page's engine: it starts its own worker, worker.js next to this
//               module, or engineConfig.workerURL / MLCEngine.workerURL), WebWorkerMLCEngine /
//               CreateWebWorkerMLCEngine (a worker the page made), ServiceWorkerMLCEngine /
//               CreateServiceWorkerMLCEngine, ExtensionServiceWorkerMLCEngine / CreateExtensionServiceWorkerMLCEngine
//   handlers    WebWorkerMLCEngineHandler (a page's own worker script), ServiceWorkerMLCEngineHandler and
//               ExtensionServiceWorkerMLCEngineHandler (import those from webllm_py_sw.js: a service worker cannot
//               load Pyodide lazily)
//   config      prebuiltAppConfig, modelVersion, modelLibURLPrefix, functionCallingModelIds, ModelType
//   cache       hasModelInCache, deleteModelInCache, deleteModelAllInfoInCache, deleteModelWasmInCache,
//               deleteChatConfigInCache (appConfig defaults to prebuiltAppConfig; no engine needed)
//   integrity   verifyIntegrity, isValidSRI, IntegrityError
//   streams     Stream: what create() returns with stream: true (openai-node's: for await, toReadableStream(),
//               tee(), Stream.fromReadableStream)
//   errors      every error class the engine throws (err instanceof webllm.ModelNotFoundError), all subclasses
//               of WebLLMError, in the hierarchy of webllm_py/errors.py
//
// The wire protocol is webllm_py/worker/messages.py (its table lists every kind and its content); the Python twin
// of the page side is webllm_py/worker/client.py. Streams are pulled one chunk per request, as in WebLLM.
// Differences from WebLLM, on purpose:
//   - Errors thrown in the worker are Error subclasses whose `name` is the Python class (error.name ===
//     "InvalidRangeError"), with the error's fields (`field`, `value`, `allowed`...) as properties. WebLLM's worker
//     engines reject with a string.
//   - Leaving `for await` early (break, return, throw), cancelling its toReadableStream() or aborting
//     stream.controller ends that stream in the worker at once and frees the engine for the next request; WebLLM
//     keeps the model locked until the stream is drained (mlc-ai/mlc-llm#3113). WebLLM's stream is a bare async
//     generator; ours is also openai-node's Stream (NDJSON ReadableStream, tee).
//   - If the worker dies (an uncaught error, a message that cannot be cloned, a script that does not load) or
//     terminate() is called, every pending call rejects with WorkerError saying why instead of waiting forever.
//   - Model records name GGUF files (model_url, or WebLLM's `model`); a record's `integrity` covers every
//     downloaded file, shards included. logitProcessorRegistry throws UnsupportedFieldError (not implemented).

import prebuiltTable from "./prebuilt_models.mjs"; // build.py writes it (a JSON import breaks restarted service workers)
import { bootPython, loadConfig } from "./boot.js";

const RELOAD_HEARTBEAT_FACTOR = 4; // more missed heartbeats tolerated while a model loads (service_worker_client.py too)
const LOG_LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "SILENT"];
const HERE = import.meta.url;

// ---- errors -----------------------------------------------------------------------------------------------------

// Every error class of webllm_py/errors.py -> its parent (tests/unit/test_js_module.py checks the two agree).
const ERROR_PARENTS = {
  GGUFError: "WebLLMError",
  GGUFMetadataError: "GGUFError",
  CorruptWeightsError: "GGUFError",
  UnsupportedModelError: "WebLLMError",
  UnsupportedTokenizerError: "UnsupportedModelError",
  ModelNotFoundError: "WebLLMError",
  ModelDownloadError: "WebLLMError",
  ModelIntegrityError: "ModelDownloadError",
  IntegrityError: "ModelIntegrityError",
  StorageQuotaError: "ModelDownloadError",
  TokenizerError: "WebLLMError",
  WebGPUNotAvailableError: "WebLLMError",
  DeviceLimitError: "WebLLMError",
  ModelTooLargeError: "DeviceLimitError",
  DeviceLostError: "WebLLMError",
  GPUValidationError: "WebLLMError",
  UnknownChatTemplateError: "WebLLMError",
  ChatTemplateError: "WebLLMError",
  ContextWindowSizeExceededError: "WebLLMError",
  InvalidRequestError: "WebLLMError",
  UnsupportedFieldError: "InvalidRequestError",
  InvalidRangeError: "InvalidRequestError",
  InvalidFieldTypeError: "InvalidRequestError",
  FieldDependencyError: "InvalidRequestError",
  InvalidMessagesError: "InvalidRequestError",
  SpecifiedModelNotFoundError: "InvalidRequestError",
  UnclearModelToUseError: "InvalidRequestError",
  ReloadModelIdNotUniqueError: "InvalidRequestError",
  InvalidJSONError: "InvalidRequestError",
  RequestTooLargeError: "InvalidRequestError",
  UnsupportedSchemaError: "InvalidRequestError",
  InvalidGrammarError: "InvalidRequestError",
  GrammarLimitError: "InvalidRequestError",
  GrammarViolationError: "WebLLMError",
  InvalidAppConfigError: "WebLLMError",
  EngineNotLoadedError: "WebLLMError",
  EngineBusyError: "WebLLMError",
  ServerSentEventsError: "WebLLMError",
  UnsupportedEndpointError: "WebLLMError",
  ReloadAbortedError: "WebLLMError",
  UnknownMessageKindError: "WebLLMError",
  WorkerError: "WebLLMError",
  EngineLostError: "WorkerError",
  WorkerBootError: "WorkerError",
  WebAssemblyBlockedError: "WebLLMError",
};

/** Base class of every error the engine throws; `name` is the Python class name. */
export class WebLLMError extends Error {
  constructor(message, details) {
    super(message);
    if (details) Object.assign(this, details);
  }
}
Object.defineProperty(WebLLMError.prototype, "name", { value: "WebLLMError", configurable: true, writable: true });

const errorClasses = new Map([["WebLLMError", WebLLMError]]);

/** The Error subclass for a Python error class name (created on first use, then the same class every time); a name
 *  webllm_py/errors.py does not have (a Python built-in, a bug) gets a direct subclass of WebLLMError. */
export function errorClass(name) {
  let cls = errorClasses.get(name);
  if (!cls) {
    const Parent = errorClass(ERROR_PARENTS[name] || "WebLLMError");
    cls = { [name]: class extends Parent {} }[name];
    Object.defineProperty(cls.prototype, "name", { value: name, configurable: true, writable: true });
    errorClasses.set(name, cls);
  }
  return cls;
}

export const {
  GGUFError,
  GGUFMetadataError,
  CorruptWeightsError,
  UnsupportedModelError,
  UnsupportedTokenizerError,
  ModelNotFoundError,
  ModelDownloadError,
  ModelIntegrityError,
  IntegrityError,
  StorageQuotaError,
  TokenizerError,
  WebGPUNotAvailableError,
  DeviceLimitError,
  ModelTooLargeError,
  DeviceLostError,
  GPUValidationError,
  UnknownChatTemplateError,
  ChatTemplateError,
  ContextWindowSizeExceededError,
  InvalidRequestError,
  UnsupportedFieldError,
  InvalidRangeError,
  InvalidFieldTypeError,
  FieldDependencyError,
  InvalidMessagesError,
  SpecifiedModelNotFoundError,
  UnclearModelToUseError,
  ReloadModelIdNotUniqueError,
  InvalidJSONError,
  RequestTooLargeError,
  UnsupportedSchemaError,
  InvalidGrammarError,
  GrammarLimitError,
  GrammarViolationError,
  InvalidAppConfigError,
  EngineNotLoadedError,
  EngineBusyError,
  ServerSentEventsError,
  UnsupportedEndpointError,
  ReloadAbortedError,
  UnknownMessageKindError,
  WorkerError,
  EngineLostError,
  WorkerBootError,
  WebAssemblyBlockedError,
} = Object.fromEntries(Object.keys(ERROR_PARENTS).map((name) => [name, errorClass(name)]));

/** The error a `throw` reply stands for: {name, message, details} -> an instance of errorClass(name). */
export function errorFromContent(content) {
  if (content === null || typeof content !== "object") {
    return new WorkerError(`the worker threw ${String(content)}`);
  }
  const { stack, ...details } = content.details || {};
  const error = new (errorClass(content.name || "Error"))(content.message || "", details);
  if (stack) error.workerStack = stack; // the Python traceback, for errors that are bugs
  return error;
}

function fail(name, message, details) {
  return new (errorClass(name))(message, details);
}

// ---- app config, records, integrity -----------------------------------------------------------------------------

/** WebLLM's constants. Records here name GGUF files, so no model library is ever fetched: modelVersion and
 *  modelLibURLPrefix keep WebLLM's values for pages that build model_lib URLs (which are accepted and ignored). */
export const modelVersion = "v0_2_83/base";
export const modelLibURLPrefix = "https://raw.githubusercontent.com/mlc-ai/binary-mlc-llm-libs/main/web-llm-models/";
/** The prebuilt models whose own chat template renders `tools` (Qwen2.5, Qwen3, Llama 3.1/3.2, Mistral v0.3: see
 *  prebuilt_models.json's "tool_calling"). Unlike WebLLM's list, it does not limit who takes tools: every model does,
 *  the others through the generic format (the tools in a system message, calls as <tool_call> JSON). */
export const functionCallingModelIds = Object.freeze([...(prebuiltTable.functionCallingModelIds ?? [])]);
export const ModelType = Object.freeze({ LLM: 0, embedding: 1, VLM: 2, 0: "LLM", 1: "embedding", 2: "VLM" });

function absolute(url, base) {
  return typeof url === "string" ? new URL(url, base).href : url;
}

/** webllm_py's model list (webllm_py/prebuilt_models.json, with the site's own records in place of those it
 *  serves itself: build.py writes it next to this module, as prebuilt_models.mjs). Each record has WebLLM's `model` as
 *  well as our `model_url`, absolute, so a page may pass the object, or records of it, to any engine. */
export const prebuiltAppConfig = {
  model_list: prebuiltTable.model_list.map((record) => {
    const url = absolute(record.model_url, HERE);
    return { ...record, model_url: url, model: url };
  }),
  cacheBackend: "cache",
};

function pageURL() {
  return (globalThis.location && globalThis.location.href) || HERE;
}

/** The app config with every record's model URL made absolute against this page, as WebLLM does (the worker would
 *  resolve a relative one against its own script otherwise). */
function absoluteModelURLs(appConfig) {
  if (!appConfig || !Array.isArray(appConfig.model_list)) return appConfig;
  const modelList = appConfig.model_list.map((record) => {
    const copy = { ...record };
    for (const key of ["model_url", "model"]) copy[key] = absolute(copy[key], pageURL());
    return copy;
  });
  return { ...appConfig, model_list: modelList };
}

function findRecord(modelId, appConfig) {
  const list = (appConfig && appConfig.model_list) || [];
  const record = list.find((r) => r && r.model_id === modelId);
  if (!record) {
    const known = list.map((r) => r && r.model_id).join(", ") || "(none)";
    throw new ModelNotFoundError(
      `Cannot find model record for ${JSON.stringify(modelId)} in appConfig.model_list; known model ids: ${known}`,
    );
  }
  return record;
}

const SHARD = /^(.*)-(\d{5})-of-(\d{5})\.gguf$/;

/** What a record is stored under in the browser cache (host/browser_cache.py's cache_keys): each file's absolute
 *  URL (every shard of a split GGUF), or URL#member for a GGUF inside a zip archive; a file its `integrity` gives
 *  an SRI for is stored under URL?integrity=<SRI> (checked entries only). */
function cacheKeys(record) {
  const url = absolute(record.model_url ?? record.model, pageURL());
  let files = [url];
  const name = url.split("?")[0].split("/").pop();
  const match = record.model_file ? null : SHARD.exec(name);
  if (match) {
    const base = url.slice(0, url.length - name.length);
    const count = Number(match[3]);
    files = Array.from({ length: count }, (_, i) => `${base}${match[1]}-${String(i + 1).padStart(5, "0")}-of-${match[3]}.gguf`);
  }
  const model = record.integrity?.model;
  return files.map((file) => {
    const sri = typeof model === "string" ? model : model?.[file.split("?")[0].split("/").pop()];
    const key = sri ? `${file}${file.includes("?") ? "&" : "?"}integrity=${encodeURIComponent(sri)}` : file;
    return record.model_file ? `${key}#${record.model_file}` : key;
  });
}

let warnedCrossOrigin = false;

/** The storage an app config names; WebLLM's "cross-origin" (an experimental extension's API) is served by the
 *  Cache API, which is what WebLLM does when that API is absent. */
function cacheBackend(appConfig) {
  const name = appConfig?.cacheBackend ?? appConfig?.cache_backend ?? (appConfig?.useIndexedDBCache ? "indexeddb" : "cache");
  if (name === "cross-origin") {
    if (!warnedCrossOrigin) console.warn('webllm_py: cacheBackend "cross-origin" is served by the Cache API ("cache")');
    warnedCrossOrigin = true;
    return "cache";
  }
  if (!["cache", "indexeddb", "opfs"].includes(name)) {
    throw new InvalidAppConfigError(
      `\`appConfig.cacheBackend\` must be one of "cache", "indexeddb", "opfs", "cross-origin"; got ${JSON.stringify(name)}`,
      { field: "appConfig.cacheBackend", value: name },
    );
  }
  return name;
}

let cacheHelper = null;
async function cacheStorage() {
  if (!cacheHelper) {
    try {
      cacheHelper = (await import(new URL("./helpers/cache_helper.mjs", HERE).href)).default;
    } catch (error) {
      throw new WorkerBootError(
        `the cache functions need helpers/cache_helper.mjs next to webllm_py.js (python3 build.py demo writes it): ${error.message}`,
      );
    }
  }
  return cacheHelper;
}

/** WebLLM's hasModelInCache(modelId, appConfig = prebuiltAppConfig): is every file of the model stored? */
export async function hasModelInCache(modelId, appConfig = prebuiltAppConfig) {
  const record = findRecord(modelId, appConfig);
  const storage = await cacheStorage();
  const backend = cacheBackend(appConfig);
  for (const key of cacheKeys(record)) if (!(await storage.has(backend, key))) return false;
  return true;
}

/** WebLLM's deleteModelInCache: remove the model's files (every shard) from the app config's storage. */
export async function deleteModelInCache(modelId, appConfig = prebuiltAppConfig) {
  const record = findRecord(modelId, appConfig);
  const storage = await cacheStorage();
  const backend = cacheBackend(appConfig);
  for (const key of cacheKeys(record)) await storage.remove(backend, key);
}

/** WebLLM's deleteModelAllInfoInCache: for a GGUF model, its file is all there is (config and tokenizer are in it). */
export async function deleteModelAllInfoInCache(modelId, appConfig = prebuiltAppConfig) {
  await deleteModelInCache(modelId, appConfig);
}

/** WebLLM's deleteModelWasmInCache: a GGUF model has no model library, so nothing is stored (the id is checked). */
export async function deleteModelWasmInCache(modelId, appConfig = prebuiltAppConfig) {
  findRecord(modelId, appConfig);
}

/** WebLLM's deleteChatConfigInCache: the chat config is inside the GGUF, nothing is stored apart (the id is checked). */
export async function deleteChatConfigInCache(modelId, appConfig = prebuiltAppConfig) {
  findRecord(modelId, appConfig);
}

const SRI = /^(sha256|sha384|sha512)-([A-Za-z0-9+/]+={0,2})$/;
const SRI_BYTES = { sha256: 32, sha384: 48, sha512: 64 };

/** WebLLM's isValidSRI: "sha256-", "sha384-" or "sha512-" and the base64 of a digest of that length. */
export function isValidSRI(value) {
  const match = typeof value === "string" && SRI.exec(value);
  if (!match) return false;
  try {
    return atob(match[2]).length === SRI_BYTES[match[1]];
  } catch {
    return false;
  }
}

/** WebLLM's verifyIntegrity(data, expectedSRI, url, onFailure = "error"): IntegrityError (url, expected, actual)
 *  when data's digest differs, a console warning instead with onFailure "warn". */
export async function verifyIntegrity(data, expectedSRI, url, onFailure = "error") {
  if (!isValidSRI(expectedSRI)) {
    throw new InvalidAppConfigError(`\`integrity\` of ${url} is not an SRI string: ${expectedSRI}`, {
      field: "integrity",
      value: expectedSRI,
    });
  }
  const algorithm = expectedSRI.slice(0, 6);
  const bytes = data instanceof ArrayBuffer ? data : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const digest = new Uint8Array(await crypto.subtle.digest(`SHA-${algorithm.slice(3)}`, bytes));
  const actual = `${algorithm}-${btoa(String.fromCharCode(...digest))}`;
  if (actual === expectedSRI) return;
  const message = `Integrity check of ${url} failed: expected ${expectedSRI}, got ${actual}`;
  if (onFailure === "warn") {
    console.warn(message);
    return;
  }
  throw new IntegrityError(message, { url, expected: expectedSRI, actual });
}

/** engineConfig.logitProcessorRegistry: a LogitProcessor is JS code called on every token's logits, which the
 *  Python engine cannot run (yet): refused, naming the models it was for. */
function refuseLogitProcessors(registry, where) {
  const ids = registry && typeof registry.keys === "function" ? [...registry.keys()] : registry ? Object.keys(registry) : [];
  if (!registry) return;
  throw new UnsupportedFieldError(
    `\`logitProcessorRegistry\` is not supported (${where}: logit processors are not implemented by webllm_py's ` +
      `engine; use logit_bias, or the sampling fields, per request); got processors for ${ids.join(", ") || "no model"}`,
    { field: "logitProcessorRegistry", value: ids },
  );
}

// ---- streams ------------------------------------------------------------------------------------------------------

/** The chunks of one stream in the worker, pulled one completionStreamNextChunk request each (WebLLM's pull
 *  model). return() ends the stream in the worker at once, even while a pull is on its way: the engine is free for
 *  the next request without waiting for another chunk. */
class WorkerChunks {
  constructor(engine, streamId) {
    this.engine = engine;
    this.streamId = streamId;
    this.closed = false; // return() was called, or the worker has nothing more: next() answers done
    this.ended = false; // the engine is free: the chunk with finish_reason came, or the stream ended or failed
    this.tail = Promise.resolve(); // pulls run one after another, whoever calls next()
  }

  next() {
    const pull = this.tail.then(() => this.pull());
    this.tail = pull.catch(() => {});
    return pull;
  }

  async pull() {
    if (this.closed) return { done: true, value: undefined };
    let chunk;
    try {
      chunk = await this.engine.call("completionStreamNextChunk", { streamId: this.streamId });
    } catch (error) {
      this.closed = this.ended = true; // an error from the worker ends the stream there too
      throw error;
    }
    if (chunk === null || typeof chunk !== "object") this.closed = this.ended = true;
    if (this.closed) return { done: true, value: undefined }; // (or return() came while this chunk was on its way)
    if (hasFinishReason(chunk)) this.ended = true;
    return { done: false, value: chunk };
  }

  async return(value) {
    if (!this.ended) this.engine.postNoReply("interruptGenerate", { streamId: this.streamId });
    this.closed = this.ended = true;
    return { done: true, value };
  }
}

/** A line of newline-delimited JSON a Stream was made from that is not JSON. */
function badLine(number, line, error) {
  const shown = line.length > 80 ? `${line.slice(0, 80)}...` : line;
  return new InvalidJSONError(`stream line ${number} is not JSON (${error.message}): ${shown}`, {
    field: `stream line ${number}`,
    reason: error.message,
  });
}

/** The values of a ReadableStream of newline-delimited JSON (bytes or strings), one per non-empty line. Stopping
 *  early cancels the ReadableStream (which, for one made by Stream.toReadableStream, ends the generation). */
async function* ndjsonValues(readableStream) {
  const reader = readableStream.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  let number = 0;
  let done = false;
  try {
    while (!done) {
      const read = await reader.read();
      done = read.done;
      if (done) buffered += decoder.decode();
      else buffered += typeof read.value === "string" ? read.value : decoder.decode(read.value, { stream: true });
      const lines = buffered.split("\n");
      buffered = done ? "" : lines.pop();
      for (const line of lines) {
        number += 1;
        if (!line.trim()) continue;
        let value;
        try {
          value = JSON.parse(line);
        } catch (error) {
          throw badLine(number, line, error);
        }
        yield value;
      }
    }
  } finally {
    if (!done) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/** What chat.completions.create / completions.create return with stream: true, as openai-node's Stream: an async
 *  iterable of chunks (also an async iterator: next() and return(), as WebLLM's async generator), with
 *    toReadableStream()  a ReadableStream<Uint8Array> of newline-delimited JSON, one chunk per line, read on demand
 *                        (openai-node's format: its Stream.fromReadableStream and ChatCompletionStream read it);
 *    tee()               two Streams of the same chunks; the generation ends when both have stopped reading;
 *    Stream.fromReadableStream(readableStream, controller?)  the Stream such a ReadableStream holds (in another
 *                        worker or page: ReadableStreams can be transferred over postMessage).
 *  Stopping early ends the generation in the worker and frees the engine: breaking out of `for await`, return(),
 *  cancelling the ReadableStream (or a reader of it), or controller.abort() (stream.controller, an AbortController,
 *  as openai-node's); the stream then ends without an error. A stream is read once: after toReadableStream() or
 *  tee() read what they returned. */
export class Stream {
  /** @param iterator a function returning the AsyncIterator of the chunks (openai-node's constructor)
   *  @param controller an AbortController whose abort() stops the stream */
  constructor(iterator, controller = new AbortController()) {
    this.iterator = iterator;
    this.controller = controller;
    this.source = null; // the chunks' iterator, once asked for
    this.handedTo = ""; // "tee" or "toReadableStream", once the chunks went there
    if (controller.signal.aborted) this.return();
    else controller.signal.addEventListener("abort", () => this.return(), { once: true });
  }

  chunks() {
    if (!this.source) this.source = this.iterator();
    return this.source;
  }

  take(by) {
    if (this.handedTo) {
      throw new TypeError(`this stream's chunks went to ${this.handedTo}() already: read the stream(s) it returned`);
    }
    this.handedTo = by;
    return this.chunks();
  }

  [Symbol.asyncIterator]() {
    if (this.handedTo) this.take("for await"); // throws, saying where the chunks went
    return this;
  }

  async next() {
    if (this.handedTo) this.take("next");
    return this.chunks().next();
  }

  async return(value) {
    const chunks = this.chunks();
    return typeof chunks.return === "function" ? chunks.return(value) : { done: true, value };
  }

  /** Two Streams of the same chunks, each read at its own pace (what one has not read yet is kept for it). */
  tee() {
    const source = this.take("tee");
    const queues = [[], []]; // per branch: promises of the results it has not taken yet
    const open = [true, true];
    const branch = (i) => ({
      next() {
        if (!open[i]) return Promise.resolve({ done: true, value: undefined });
        if (!queues[i].length) {
          const result = source.next();
          result.catch(() => {}); // a branch that never reads it must not leave an unhandled rejection
          for (const j of [0, 1]) if (open[j]) queues[j].push(result);
        }
        return queues[i].shift();
      },
      async return(value) {
        open[i] = false;
        queues[i].length = 0;
        if (!open[1 - i] && typeof source.return === "function") await source.return();
        return { done: true, value };
      },
    });
    const branches = [0, 1].map(branch);
    return branches.map((b) => new Stream(() => b, this.controller));
  }

  /** The chunks as newline-delimited JSON bytes, pulled one at a time as the reader asks (no read-ahead);
   *  cancel() ends the generation. An error of the stream errors the ReadableStream with the same error object. */
  toReadableStream() {
    const source = this.take("toReadableStream");
    const encoder = new TextEncoder();
    let cancelled = false; // (a pull on its way when the reader cancels must not touch the closed stream)
    return new ReadableStream(
      {
        async pull(controller) {
          try {
            const { value, done } = await source.next();
            if (cancelled) return;
            if (done) controller.close();
            else controller.enqueue(encoder.encode(`${JSON.stringify(value)}\n`));
          } catch (error) {
            if (!cancelled) controller.error(error);
          }
        },
        async cancel() {
          cancelled = true;
          if (typeof source.return === "function") await source.return();
        },
      },
      { highWaterMark: 0 },
    );
  }

  /** The Stream a ReadableStream of newline-delimited JSON holds (what toReadableStream() makes, or openai-node's
   *  Stream.toReadableStream()); a line that is not JSON fails the stream with InvalidJSONError naming the line. */
  static fromReadableStream(readableStream, controller) {
    return new Stream(() => ndjsonValues(readableStream), controller);
  }
}

// ---- the page's engines ------------------------------------------------------------------------------------------

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
      throw new UnsupportedFieldError(`\`modelId\` must name one model here; got ${JSON.stringify(modelId)}`, {
        field: "modelId",
        value: modelId,
      });
    }
    return modelId[0];
  }
  return modelId;
}

/** What a worker's `error` event says: a runtime error's message, file and line; for a module script that did not
 *  load (Chrome's event then says nothing), the script's URL and its HTTP status. */
async function workerFailure(event, scriptURL) {
  if (event && event.message) {
    const where = event.filename ? ` (${event.filename}:${event.lineno}:${event.colno})` : "";
    return `the worker failed: ${event.message}${where}`;
  }
  if (!scriptURL) return `the worker raised a ${event && event.type} event and stopped`;
  let status = "";
  try {
    const response = await fetch(scriptURL, { cache: "no-store" });
    status = response.ok
      ? `it is served (HTTP ${response.status}), so the module or one it imports has an error or failed to load ` +
        "(the browser console of the worker shows which)"
      : `it is not served: HTTP ${response.status} ${response.statusText}`;
  } catch (error) {
    status = `fetching it failed: ${error.message}`;
  }
  return `the worker script ${scriptURL} did not start: ${status}`;
}

/** WebLLM's WebWorkerMLCEngine: the MLCEngine API, served by webllm_py's engine in a Web Worker. */
export class WebWorkerMLCEngine {
  /**
   * @param worker a module Worker whose script runs WebWorkerMLCEngineHandler (worker.js next to this module, or
   *               the page's own); anything with postMessage and addEventListener("message") works.
   * @param engineConfig {initProgressCallback?, appConfig?, logLevel?}; logitProcessorRegistry throws
   *               UnsupportedFieldError.
   */
  constructor(worker, engineConfig = {}) {
    refuseLogitProcessors(engineConfig.logitProcessorRegistry, "engineConfig");
    this.worker = worker;
    this.modelId = undefined; // the models loaded for us (a list, as WebLLM's); sent with each request so a
    this.chatOpts = undefined; // restarted worker loads them again
    this.initProgressCallback = engineConfig.initProgressCallback;
    this.pending = new Map(); // uuid -> {resolve, reject}
    this.terminated = null;
    this.chat = { completions: { create: (request) => this.chatCompletion(request) } };
    this.completions = { create: (request) => this.completion(request) };
    this.embeddings = { create: (request) => this.embedding(request) };
    this.onmessage = this.onmessage.bind(this);
    this.onerror = this.onerror.bind(this);
    worker.addEventListener("message", this.onmessage);
    worker.addEventListener("error", this.onerror);
    worker.addEventListener("messageerror", this.onerror);
    // Posted now, so they reach the worker before any later request; their errors surface on the next call.
    this.setup = [];
    if (engineConfig.appConfig) this.setAppConfig(engineConfig.appConfig);
    if (engineConfig.logLevel) this.setLogLevel(engineConfig.logLevel);
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

  /** A request whose error surfaces on the next call (setAppConfig, setLogLevel), not as an unhandled rejection. */
  queueSetup(promise) {
    promise.catch(() => {});
    this.setup.push(promise);
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
    else waiter.reject(new UnknownMessageKindError(`unexpected reply kind ${String(kind)}`));
  }

  onerror(event) {
    // An error event without a message is a module worker that did not load: it is gone, so later calls fail at
    // once with the same reason. One with a message is an uncaught error in a worker that runs on.
    const gone = event && event.type === "error" && !event.message;
    workerFailure(event, this.workerURL).then((message) => {
      const error = new WorkerError(message);
      if (gone && !this.terminated) this.terminated = error;
      this.failPending(error);
    });
  }

  failPending(error) {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const waiter of pending) waiter.reject(error);
  }

  /** Stop the worker; calls still waiting reject with WorkerError, and so do later ones. */
  terminate() {
    if (this.terminated) return;
    this.terminated = new WorkerError("the worker was terminated");
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
   *  one per id): {context_window_size?, prefill_chunk_size?, chat_template?} and the model's sampling defaults {temperature?, top_p?,
   *  presence_penalty?, frequency_penalty?, repetition_penalty?}, which a request's own values override. A reload
   *  aborted by unload() or a later reload() resolves with a console warning, as WebLLM's does. */
  async reload(modelId, chatOpts) {
    const ids = Array.isArray(modelId) ? [...modelId] : [modelId];
    try {
      await this.call("reload", { modelId: ids, chatOpts: chatOpts ?? null });
    } catch (error) {
      if (error instanceof ReloadAbortedError) {
        console.warn(`webllm_py: ${error.message}`);
        return;
      }
      throw error;
    }
    this.modelId = ids;
    this.chatOpts = chatOpts ?? undefined;
  }

  async unload() {
    await this.call("unload", null);
    this.modelId = undefined;
    this.chatOpts = undefined;
  }

  // ---- requests -----------------------------------------------------------------------------------------------

  modelContent(request) {
    return { request, modelId: this.modelId ?? null, chatOpts: this.chatOpts ?? null };
  }

  /** WebLLM's engine.chatCompletion: a ChatCompletion, or (stream: true) an async iterable of chunks. */
  async chatCompletion(request) {
    return this.generate(request, "chatCompletionStreamInit", "chatCompletionNonStreaming");
  }

  /** WebLLM's engine.completion: text completion, a Completion or (stream: true) an async iterable of them. */
  async completion(request) {
    return this.generate(request, "completionStreamInit", "completionNonStreaming");
  }

  /** WebLLM's engine.embedding (embeddings.create): not implemented by webllm_py yet. */
  async embedding() {
    throw new UnsupportedEndpointError("embeddings (`embeddings.create`) are not implemented by webllm_py yet");
  }

  async generate(request, streamKind, wholeKind) {
    if (request && request.stream) {
      const streamId = newUUID(); // the init request's uuid names the stream
      await this.call(streamKind, this.modelContent(request), streamId);
      const chunks = new WorkerChunks(this, streamId);
      return new Stream(() => chunks);
    }
    return this.call(wholeKind, this.modelContent(request));
  }

  // ---- WebLLM's other engine methods --------------------------------------------------------------------------

  /** End the running generation at its next token with finish_reason "abort" (not awaited, as in WebLLM). */
  interruptGenerate() {
    this.postNoReply("interruptGenerate", null);
  }

  /** Forget the conversation (and the last reply's stats unless keepStats) of modelId, or of the only model. */
  async resetChat(keepStats = false, modelId) {
    await this.call("resetChat", { keepStats, modelId: modelId ?? null });
  }

  /** The text of the current or last reply of modelId (or of the only model loaded). */
  async getMessage(modelId) {
    return this.call("getMessage", { modelId: modelId ?? null });
  }

  /** "prefill: X tokens/sec, decoding: Y tokens/sec" for modelId's last request (or the only model's). */
  async runtimeStatsText(modelId) {
    return this.call("runtimeStatsText", { modelId: modelId ?? null });
  }

  /** WebLLM's low-level step: forward inputIds after what was forwarded before (since resetChat) and sample one
   *  token with the model's default sampling; returns its id (pass it back next time). */
  async forwardTokensAndSample(inputIds, isPrefill, modelId) {
    return this.call("forwardTokensAndSample", {
      inputIds: Array.from(inputIds ?? []),
      isPrefill: Boolean(isPrefill),
      modelId: modelId ?? null,
    });
  }

  async getGPUVendor() {
    return this.call("getGPUVendor", null);
  }

  async getMaxStorageBufferBindingSize() {
    return this.call("getMaxStorageBufferBindingSize", null);
  }

  /** Synchronous, as WebLLM's: the level is checked here, the message sent at once; an error the worker finds
   *  surfaces on the next call. */
  setLogLevel(logLevel) {
    if (!LOG_LEVELS.includes(logLevel)) {
      throw new UnsupportedFieldError(`\`logLevel\` must be one of ${LOG_LEVELS.join(", ")}; got ${logLevel}`, {
        field: "logLevel",
        value: logLevel,
      });
    }
    this.queueSetup(this.send("setLogLevel", logLevel));
  }

  /** Synchronous, as WebLLM's: replace the worker's model list ({model_list: [{model_id, model_url (or WebLLM's
   *  `model`), ...}], cacheBackend?}); the next call fails with InvalidAppConfigError if the worker refuses it.
   *  Relative model URLs are made absolute against this page, as WebLLM does. */
  setAppConfig(appConfig) {
    this.queueSetup(this.send("setAppConfig", absoluteModelURLs(appConfig)));
  }

  /** The worker's app config, e.g. to fill a model picker (a webllm_py addition). */
  async getAppConfig() {
    return this.call("getAppConfig", null);
  }

  /** Is this model's file in the worker's cache (its app config's backend)? The top-level hasModelInCache asks
   *  the page's storage directly, without a worker. */
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

/** WebLLM's MLCEngine, on the page: the same API, served by webllm_py's engine in a module worker this engine
 *  starts itself (Python must not block the page), from engineConfig.workerURL, else MLCEngine.workerURL (worker.js
 *  next to this module). The worker boots while the page goes on; terminate() stops it. */
export class MLCEngine extends WebWorkerMLCEngine {
  static workerURL = new URL("./worker.js", HERE).href;

  constructor(engineConfig = {}) {
    refuseLogitProcessors(engineConfig.logitProcessorRegistry, "engineConfig");
    const workerURL = new URL(engineConfig.workerURL ?? MLCEngine.workerURL, pageURL()).href;
    super(new Worker(workerURL, { type: "module" }), engineConfig);
    this.workerURL = workerURL;
  }

  setLogitProcessorRegistry(registry) {
    refuseLogitProcessors(registry, "setLogitProcessorRegistry");
  }
}

/** WebLLM's CreateMLCEngine(modelId, engineConfig, chatOpts): a new MLCEngine with `modelId` (one id or a list)
 *  loaded. */
export async function CreateMLCEngine(modelId, engineConfig = {}, chatOpts) {
  const engine = new MLCEngine(engineConfig);
  try {
    await engine.reload(modelId, chatOpts);
  } catch (error) {
    engine.terminate(); // nobody else holds this engine: its worker would run on with nothing loaded
    throw error;
  }
  return engine;
}

// ---- the page side of service-worker engines (sw.js, the extension's background.js) ------------------------------

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
      throw new EngineLostError(
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
    const error = new EngineLostError(
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
    const error = new EngineLostError(
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
    throw new EngineLostError(
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

// ---- worker-side handlers: what a worker script runs ----------------------------------------------------------------
//
// WebLLM's documented worker.ts works unchanged but for its import:
//
//   import { WebWorkerMLCEngineHandler } from "./webllm_py.js";
//   const handler = new WebWorkerMLCEngineHandler();
//   self.onmessage = (msg) => handler.onmessage(msg);
//
// The handler boots Python (the boot config webllm_py.json next to this module: boot.js says what it holds), and
// hands every message to webllm_py's Python handler; messages that arrive while it boots are kept and delivered in
// order. A boot that fails answers every message with WorkerBootError saying why. While it boots (seconds: the
// runtime is ~13 MB of wasm and stdlib) it reports {kind: "initProgressCallback", uuid: "", content: {progress,
// timeElapsed, text}}, WebLLM's InitProgressReport, so a page can show it before the model's own.

let staticPyodide = null; // what webllm_py_sw.js imported statically: {loadPyodide, createPyodideModule, helpers}

/** Hand over Pyodide's loader imported statically (webllm_py_sw.js does: a service worker cannot import()). */
export function usePyodide(loader) {
  staticPyodide = loader;
}

function inServiceWorker() {
  return typeof ServiceWorkerGlobalScope !== "undefined" && globalThis instanceof ServiceWorkerGlobalScope;
}

async function startPython(scriptURL, progress) {
  const config = await loadConfig(scriptURL);
  if (!staticPyodide && inServiceWorker()) {
    throw new WorkerBootError(
      "a service worker cannot load Pyodide lazily (import() is not allowed there): import the handler from " +
        "webllm_py_sw.js, which imports Pyodide statically, instead of webllm_py.js",
    );
  }
  return { pyodide: await bootPython(config, staticPyodide || {}, progress), config };
}

function bootReply(message, error) {
  const uuid = (message && typeof message === "object" && typeof message.uuid === "string" && message.uuid) || "";
  const name = error && error.name === "WebAssemblyBlockedError" ? error.name : "WorkerBootError";
  return { kind: "throw", uuid, content: { name, message: String((error && error.message) || error) } };
}

/** A reload of a model whose logits a registered LogitProcessor was to see: refused, typed (the page's
 *  CreateWebWorkerMLCEngine rejects with it). */
function logitProcessorReply(registry, message) {
  if (!registry || !message || message.kind !== "reload") return null;
  try {
    refuseLogitProcessors(registry, "WebWorkerMLCEngineHandler.setLogitProcessorRegistry");
  } catch (error) {
    return { kind: "throw", uuid: message.uuid, content: { name: error.name, message: error.message, details: { field: error.field } } };
  }
  return null;
}

/** WebLLM's WebWorkerMLCEngineHandler, for a dedicated (module) worker: `new WebWorkerMLCEngineHandler()`, then
 *  `self.onmessage = (msg) => handler.onmessage(msg)`. options.scriptURL: where to look for the boot config
 *  (webllm_py.json next to it, or its ?config=...); default this module. */
export class WebWorkerMLCEngineHandler {
  constructor(options = {}) {
    this.started = performance.now();
    this.queue = []; // messages that came while Python booted
    this.deliver = null; // the Python handler's entry, once booted
    this.bootError = null;
    this.registry = null;
    this.ready = this.boot(options.scriptURL || HERE).then(
      (deliver) => {
        this.deliver = deliver;
        for (const data of this.queue.splice(0)) this.deliver(data);
      },
      (error) => {
        this.bootError = error;
        console.error("webllm_py worker failed to boot:", error);
        for (const data of this.queue.splice(0)) this.postMessage(bootReply(data, error));
      },
    );
  }

  async boot(scriptURL) {
    const { pyodide, config } = await startPython(scriptURL, (progress, text) => this.progress(progress, text));
    const entry = pyodide.pyimport("webllm_py.host.worker_entry");
    const deliver = entry.connect.callKwargs(config.handler, { app_config_json: config.appConfig });
    entry.destroy();
    // Below 1: pages take progress 1 for "the model is loaded" (WebLLM's last report), which comes after this.
    this.progress(0.9, `Python runtime ready (${((performance.now() - this.started) / 1000).toFixed(1)} s)`);
    return deliver;
  }

  progress(progress, text) {
    const timeElapsed = (performance.now() - this.started) / 1000;
    this.postMessage({ kind: "initProgressCallback", uuid: "", content: { progress, timeElapsed, text } });
  }

  /** One message from the page: a MessageEvent (or its data). */
  onmessage(event) {
    const data = event && typeof event === "object" && "data" in event ? event.data : event;
    const refused = logitProcessorReply(this.registry, data);
    if (refused) this.postMessage(refused);
    else if (this.bootError) this.postMessage(bootReply(data, this.bootError));
    else if (!this.deliver) this.queue.push(data);
    else this.deliver(data);
  }

  postMessage(message) {
    globalThis.postMessage(message);
  }

  /** WebLLM's registry of per-model LogitProcessors. Not implemented: a later reload answers UnsupportedFieldError
   *  (typed, on the page) instead of loading a model whose processor would never run. */
  setLogitProcessorRegistry(registry) {
    this.registry = registry && (registry.size ?? Object.keys(registry).length) ? registry : null;
  }
}

/** The clients of a service-worker engine, and the Python entry that serves them (service_worker_entry.py): what
 *  ServiceWorkerMLCEngineHandler and ExtensionServiceWorkerMLCEngineHandler share. Messages from a client that come
 *  while Python boots wait for it; keepAlive is answered meanwhile (a heartbeat listing them), so a client does not
 *  count the boot's seconds as missed heartbeats. */
class ServiceWorkerClients {
  constructor(scriptURL, extension, post, alive) {
    this.started = performance.now();
    this.post = post; // (clientId, message)
    this.booted = false;
    this.waitingForBoot = new Map(); // client id -> uuids of its requests queued until the boot ends
    this.ready = this.boot(scriptURL, extension, alive);
    this.ready.then(
      () => (this.booted = true),
      (error) => console.error("webllm_py service worker failed to boot:", error),
    );
    this.progressTo = () => []; // the client ids to tell about the boot's progress
  }

  async boot(scriptURL, extension, alive) {
    const { pyodide, config } = await startPython(scriptURL, (progress, text) => {
      const content = { progress, timeElapsed: (performance.now() - this.started) / 1000, text };
      for (const id of this.progressTo()) this.post(id, { kind: "initProgressCallback", uuid: "", content });
    });
    const entry = pyodide.pyimport("webllm_py.host.service_worker_entry");
    entry.start((id, message) => this.post(id, message), alive, config.appConfig, extension);
    return entry;
  }

  /** One message from client `id`; returns a promise that settles when it has been answered (for waitUntil). */
  receive(id, data) {
    if (data === null || typeof data !== "object") {
      const message = `a worker message must be {kind, uuid, content}; got ${String(data)}`;
      this.post(id, { kind: "throw", uuid: "", content: { name: "UnknownMessageKindError", message } });
      return Promise.resolve();
    }
    if (!this.booted && data.kind === "keepAlive") {
      const pending = [...(this.waitingForBoot.get(id) || [])];
      this.post(id, { kind: "heartbeat", uuid: data.uuid, content: { pending } });
      return Promise.resolve();
    }
    if (!this.booted) {
      if (!this.waitingForBoot.has(id)) this.waitingForBoot.set(id, new Set());
      this.waitingForBoot.get(id).add(data.uuid);
    }
    return this.ready.then(
      async (entry) => {
        const promise = entry.on_message(id, data); // takes the request before the next one is dispatched
        this.waitingForBoot.get(id)?.delete(data.uuid);
        try {
          await promise;
        } catch (error) {
          // on_message answers everything itself; this is the Python runtime failing (out of memory, a crash)
          const message = String((error && error.message) || error);
          this.post(id, { kind: "throw", uuid: data.uuid || "", content: { name: "WorkerError", message } });
        }
      },
      (error) => this.post(id, bootReply(data, error)),
    );
  }
}

/** WebLLM's ServiceWorkerMLCEngineHandler, in a module service worker (import it from webllm_py_sw.js): one
 *  engine for every tab of the origin. Create it when the worker script runs (a restarted worker gets its events
 *  only from listeners added then); WebLLM's example creates it in "activate", which works until the browser
 *  restarts the worker. options.endpoint: also answer OpenAI's HTTP API under the scope (<scope>v1/...), as
 *  web/sw.js does; options.scriptURL: where the boot config is (default: next to this module). */
export class ServiceWorkerMLCEngineHandler {
  constructor(options = {}) {
    if (!inServiceWorker()) {
      throw new WorkerBootError("ServiceWorkerMLCEngineHandler runs in a service worker (ServiceWorkerGlobalScope)");
    }
    this.clientsById = new Map(); // id -> the Client (tab) that sent a message, for its replies
    this.clients = new ServiceWorkerClients(
      options.scriptURL || HERE,
      false,
      (id, message) => this.clientsById.get(id)?.postMessage(message),
      async (id) => {
        const client = await globalThis.clients.get(id);
        if (!client) this.clientsById.delete(id);
        return Boolean(client);
      },
    );
    this.clients.progressTo = () => [...this.clientsById.keys()];
    globalThis.addEventListener("message", (event) => this.onmessage(event));
    if (options.endpoint) globalThis.addEventListener("fetch", (event) => this.onfetch(event));
  }

  onmessage(event) {
    const client = event.source;
    if (!client || !client.id) return; // nobody to answer
    this.clientsById.set(client.id, client);
    // waitUntil keeps the worker alive until this request is answered (a stream: until this chunk is).
    event.waitUntil(this.clients.receive(client.id, event.data));
  }

  onfetch(event) {
    const url = new URL(event.request.url);
    const scope = new URL(globalThis.registration.scope);
    if (url.origin !== scope.origin || !url.pathname.startsWith(scope.pathname + "v1/")) return; // the network's
    event.respondWith(this.answerFetch(event.request, url.pathname.slice(scope.pathname.length)));
  }

  /** The local OpenAI endpoint (worker/local_endpoint.py): JSON answers, or an SSE stream read from Python. */
  async answerFetch(request, route) {
    const failure = (code, status, error) => {
      const body = { error: { message: String(error && error.message), type: "server_error", param: null, code } };
      return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
    };
    let entry;
    try {
      entry = await this.clients.ready;
    } catch (error) {
      return failure("WorkerBootError", 503, error);
    }
    let answer;
    try {
      const body = request.method === "GET" || request.method === "HEAD" ? null : await request.text();
      answer = await entry.on_fetch(request.method, route, body);
    } catch (error) {
      return failure("WorkerError", 500, error); // on_fetch answers every request itself: the runtime failed
    }
    if (!answer.stream) return new Response(answer.body || null, { status: answer.status, headers: answer.headers });
    const events = answer.stream;
    const encoder = new TextEncoder();
    let open = true;
    const finish = () => {
      if (open) events.destroy();
      open = false;
    };
    const stream = new ReadableStream({
      async pull(controller) {
        const text = await events.next();
        if (text === undefined || text === null) {
          finish();
          controller.close();
        } else {
          controller.enqueue(encoder.encode(text));
        }
      },
      async cancel() {
        // The page stopped reading (aborted the fetch, closed the tab): end its generation in the engine.
        if (open) await events.close();
        finish();
      },
    });
    return new Response(stream, { status: answer.status, headers: answer.headers });
  }
}

const EXTENSION_PORT = "web_llm_service_worker";

/** WebLLM's ExtensionServiceWorkerMLCEngineHandler, in an MV3 extension's module service worker (import it from
 *  webllm_py_sw.js; the manifest's CSP needs 'wasm-unsafe-eval'). WebLLM's background.ts works unchanged:
 *
 *    chrome.runtime.onConnect.addListener((port) => {
 *      if (handler === undefined) handler = new ExtensionServiceWorkerMLCEngineHandler(port);
 *      else handler.setPort(port);
 *      port.onMessage.addListener(handler.onmessage.bind(handler));
 *    });
 *
 *  Unlike WebLLM's, which answers only its latest port, every connected port (popup, page) is a client of its own:
 *  replies go to the port the request came on. */
export class ExtensionServiceWorkerMLCEngineHandler {
  constructor(port, options = {}) {
    this.ports = new Map(); // id -> chrome.runtime.Port
    this.ids = new Map(); // Port -> id
    this.count = 0;
    this.port = null; // the latest port (WebLLM's field)
    this.clients = new ServiceWorkerClients(
      options.scriptURL || HERE,
      true,
      (id, message) => this.ports.get(id)?.postMessage(message),
      (id) => this.ports.has(id),
    );
    this.clients.progressTo = () => [...this.ports.keys()];
    if (port) this.setPort(port);
  }

  /** A port connected (WebLLM's name): it becomes a client; messages on it are answered on it. */
  setPort(port) {
    if (port.name && port.name !== EXTENSION_PORT) return;
    if (this.ids.has(port)) return;
    this.count += 1;
    const id = `port-${this.count}`;
    this.ports.set(id, port);
    this.ids.set(port, id);
    this.port = port;
    // Registered before any message of this port is received: Python knows the port when the first one arrives.
    this.clients.ready.then((entry) => entry.connect(id)).catch(() => {});
    port.onDisconnect.addListener(() => {
      this.ports.delete(id);
      this.ids.delete(port);
      this.clients.waitingForBoot.delete(id);
      this.clients.ready.then((entry) => entry.disconnect(id)).catch(() => {});
    });
  }

  /** One message (chrome.runtime.Port.onMessage passes it, and the port it came on). */
  onmessage(message, port) {
    const id = this.ids.get(port || this.port);
    if (id !== undefined) this.clients.receive(id, message);
  }
}
