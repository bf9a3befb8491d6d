// WebLLM's examples/vision-model/src/worker.ts (c51c9c0), on webllm_py: only the import changed.
import { WebWorkerMLCEngineHandler } from "../webllm_py.js";

const handler = new WebWorkerMLCEngineHandler();

self.onmessage = (msg) => {
  handler.onmessage(msg);
};
