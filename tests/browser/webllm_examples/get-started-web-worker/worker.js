// WebLLM's examples/get-started-web-worker/src/worker.ts (c51c9c0), on webllm_py: only the import changed.
import { WebWorkerMLCEngineHandler } from "../webllm_py.js";

// Hookup an engine to a worker handler
const handler = new WebWorkerMLCEngineHandler();
self.onmessage = (msg) => {
  handler.onmessage(msg);
};
