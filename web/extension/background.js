// The engine in a Chrome extension's (MV3) service worker: one model for the popup and every extension page, each
// connected over a chrome.runtime Port named "web_llm_service_worker" (CreateExtensionServiceWorkerMLCEngine in
// webllm_py.js). `python3 build.py extension` packs this folder with Pyodide, the wheels, the model, webllm_py.js
// and the host's JS helpers as modules (the extension's CSP forbids the eval behind Pyodide's run_js).
//
// This is WebLLM's background.ts with our module; the handler is created when the script runs (so it boots at once
// and a restarted worker gets the connection that woke it), and every port is a client of its own. The manifest's
// CSP must allow 'wasm-unsafe-eval', or Pyodide cannot compile: every request is then answered with an error that
// says so.

import { ExtensionServiceWorkerMLCEngineHandler } from "./webllm_py_sw.js";

const handler = new ExtensionServiceWorkerMLCEngineHandler();

chrome.runtime.onConnect.addListener((port) => {
  if (port.name !== "web_llm_service_worker") return;
  handler.setPort(port);
  port.onMessage.addListener(handler.onmessage.bind(handler));
});
