// WebLLM's examples/chrome-extension-webgpu-service-worker/src/background.ts (c51c9c0), on webllm_py: only the
// import changed (a service worker imports the handlers from webllm_py_sw.js, which brings Pyodide in statically).
import { ExtensionServiceWorkerMLCEngineHandler } from "./webllm_py_sw.js";

// Hookup an engine to a service worker handler
let handler;

chrome.runtime.onConnect.addListener(function (port) {
  console.assert(port.name === "web_llm_service_worker");
  if (handler === undefined) {
    handler = new ExtensionServiceWorkerMLCEngineHandler(port);
  } else {
    handler.setPort(port);
  }
  port.onMessage.addListener(handler.onmessage.bind(handler));
});
