// WebLLM's examples/logit-processor/src/worker.ts (c51c9c0), on webllm_py: the import and the model id changed
// (phi-2-q4f32_1-MLC -> the harness's tiny model), TypeScript types removed.
import * as webllm from "../webllm_py.js";
import { MyLogitProcessor } from "./my_logit_processor.js";

console.log("Use web worker for logit processor");

const myLogitProcessor = new MyLogitProcessor();
const logitProcessorRegistry = new Map();
logitProcessorRegistry.set("tiny-llama-chat", myLogitProcessor);

const handler = new webllm.WebWorkerMLCEngineHandler();
handler.setLogitProcessorRegistry(logitProcessorRegistry);
self.onmessage = (msg) => {
  handler.onmessage(msg);
};
