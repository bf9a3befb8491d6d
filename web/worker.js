// The engine's module Web Worker, the one MLCEngine starts (and a page may start itself for WebWorkerMLCEngine):
//
//   const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
//
// It is WebLLM's documented worker.ts, with our module: WebWorkerMLCEngineHandler (webllm_py.js) boots Pyodide,
// installs webllm_py and hands every message to the Python handler (webllm_py/host/worker_entry.py). The boot
// config is webllm_py.json next to this script, or the one ?config=URL names (boot.js says what it holds and which
// ?query overrides it); the handler module it names has create_handler(post).

import { WebWorkerMLCEngineHandler } from "./webllm_py.js";

const handler = new WebWorkerMLCEngineHandler({ scriptURL: import.meta.url });
self.onmessage = (message) => handler.onmessage(message);
