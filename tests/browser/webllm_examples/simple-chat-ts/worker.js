// WebLLM's examples/simple-chat-ts/src/worker.ts (c51c9c0), on webllm_py: only the import changed.
// Serve the engine workload through web worker
import { WebWorkerMLCEngineHandler } from "../webllm_py.js";

const handler = new WebWorkerMLCEngineHandler();
self.onmessage = (msg) => {
  handler.onmessage(msg);
};
