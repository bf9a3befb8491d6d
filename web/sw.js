// The engine in a module service worker: one loaded model for every tab of the origin, and a local OpenAI
// endpoint (POST v1/chat/completions, v1/completions; GET v1/models under the worker's scope).
//
//   navigator.serviceWorker.register("./sw.js", { type: "module", scope: "./" });
//   const engine = await CreateServiceWorkerMLCEngine("SmolLM2-135M-Instruct-Q4_1");      // from webllm_py.js
//   const reply = await fetch("v1/chat/completions", { method: "POST", body: JSON.stringify({ messages }) });
//
// WebLLM's ServiceWorkerMLCEngineHandler (webllm_py_sw.js) does the work; the configuration is worker.js's
// (boot.js: webllm_py.json next to this script). The Python side is webllm_py/host/service_worker_entry.py; the
// protocol is webllm_py/worker/messages.py, served by webllm_py/worker/service_worker.py.
//
// The browser stops an idle service worker (after ~30 s) and may stop a busy one; the next message or fetch starts
// this script again, which boots Pyodide again, and the first request reloads its model (from the browser cache).
// The handler adds its listeners as this script runs, as the spec requires for a restarted worker to get its events.

import { ServiceWorkerMLCEngineHandler } from "./webllm_py_sw.js";

// A new version takes over at once and controls the open tabs, so the first visit can talk to it without a reload.
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

new ServiceWorkerMLCEngineHandler({ scriptURL: import.meta.url, endpoint: true });
