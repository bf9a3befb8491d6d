// WebLLM's examples/service-worker/src/sw.ts (c51c9c0), on webllm_py: the import changed (a service worker imports
// the handlers from webllm_py_sw.js, which brings Pyodide in statically), TypeScript types removed.
import { ServiceWorkerMLCEngineHandler } from "../webllm_py_sw.js";

let handler;

self.addEventListener("activate", function (event) {
  handler = new ServiceWorkerMLCEngineHandler();
  console.log("Web-LLM Service Worker Activated");
});
