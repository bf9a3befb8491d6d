// The engine's module Web Worker: boots Pyodide, installs webllm_py, and hands every message to the Python handler.
//
//   const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
//
// Configuration: a JSON file next to this script (boot.js says what it holds and which ?query overrides it); the
// handler module has create_handler(post) (webllm_py/host/worker_entry.py). Messages that arrive while Python boots are
// kept and delivered in order once the handler is running. If booting fails, every message (kept or later) is
// answered with {kind: "throw", uuid, content: {name: "WorkerBootError", message}}. While it boots (seconds: the
// runtime is ~13 MB of wasm and stdlib), the worker reports {kind: "initProgressCallback", uuid: "", content:
// {progress, timeElapsed, text}}, WebLLM's InitProgressReport, so a page can show it before the model's own.

import { checkWebAssembly, installWheels, loadConfig } from "./boot.js";

const pending = [];
let bootError = null;
const started = performance.now();

function bootProgress(progress, text) {
  self.postMessage({
    kind: "initProgressCallback",
    uuid: "",
    content: { progress, timeElapsed: (performance.now() - started) / 1000, text },
  });
}

function answerWithBootError(msg) {
  self.postMessage({
    kind: "throw",
    uuid: (msg && msg.uuid) || "",
    content: { name: "WorkerBootError", message: bootError },
  });
}

self.onmessage = (event) => {
  if (bootError !== null) answerWithBootError(event.data);
  else pending.push(event.data);
};

async function boot() {
  const config = await loadConfig(import.meta.url);
  await checkWebAssembly();
  bootProgress(0, "Starting the Python runtime (Pyodide)");
  const { loadPyodide } = await import(new URL("pyodide.mjs", config.indexURL).href);
  const pyodide = await loadPyodide({ indexURL: config.indexURL, packages: config.packages });
  bootProgress(0.7, "Installing webllm_py");
  await installWheels(pyodide, config.wheels);
  const entry = pyodide.pyimport("webllm_py.host.worker_entry");
  entry.start.callKwargs(config.handler, { app_config_json: config.appConfig }); // replaces self.onmessage
  entry.destroy();
  bootProgress(1, `Python runtime ready (${((performance.now() - started) / 1000).toFixed(1)} s)`);
  for (const data of pending.splice(0)) self.dispatchEvent(new MessageEvent("message", { data }));
}

boot().catch((error) => {
  bootError = String((error && error.message) || error);
  console.error("webllm_py worker failed to boot:", error);
  for (const data of pending.splice(0)) answerWithBootError(data);
});
