// The engine's module Web Worker: boots Pyodide, installs webllm_py, and hands every message to the Python handler.
//
//   const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
//
// Configuration comes from a JSON file next to this script (default "webllm_py.json", written by
// `python3 build.py demo`), or another one named by ?config=URL. Relative URLs in it are relative to that file:
//
//   { "indexURL": "pyodide/",                 where pyodide.mjs and the runtime are (a real site: a CDN)
//     "packages": ["micropip"],               packages from the Pyodide lock, loaded while the runtime starts
//     "wheels": ["wheels/webllm_py-0.1.0-py3-none-any.whl"],   installed with micropip.install(url, deps=False)
//     "handler": "webllm_py.worker.handler" } Python module with create_handler(post) (webllm_py/host/worker_entry.py)
//
// ?indexURL=, ?wheel= (repeatable) and ?handler= override the file. Messages that arrive while Python boots are
// kept and delivered in order once the handler is running. If booting fails, every message (kept or later) is
// answered with {kind: "throw", uuid, content: {name: "WorkerBootError", message}}. While it boots (seconds: the
// runtime is ~13 MB of wasm and stdlib), the worker reports {kind: "initProgressCallback", uuid: "", content:
// {progress, timeElapsed, text}}, WebLLM's InitProgressReport, so a page can show it before the model's own.

const here = new URL(import.meta.url);
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

async function loadConfig() {
  const params = here.searchParams;
  const configURL = new URL(params.get("config") || "./webllm_py.json", here);
  let config = {};
  const response = await fetch(configURL);
  if (response.ok) config = await response.json();
  else if (params.has("config")) throw new Error(`cannot read the worker config ${configURL}: HTTP ${response.status}`);
  const base = response.ok ? configURL : here;
  const indexURL = new URL(params.get("indexURL") || config.indexURL || "pyodide/", base).href;
  const wheels = params.getAll("wheel").length ? params.getAll("wheel") : config.wheels || [];
  return {
    // loadPyodide wants the directory with a trailing slash
    indexURL: indexURL.endsWith("/") ? indexURL : indexURL + "/",
    packages: config.packages || ["micropip"],
    wheels: wheels.map((w) => new URL(w, base).href),
    handler: params.get("handler") || config.handler || "webllm_py.worker.handler",
    // The site's model list: the engine's app config until a page sends its own (relative model URLs are
    // relative to this worker script, like the config file next to it).
    appConfig: config.appConfig ? JSON.stringify(config.appConfig) : null,
  };
}

async function boot() {
  const config = await loadConfig();
  if (!config.wheels.length) throw new Error("no wheels to install: the worker config lists none");
  bootProgress(0, "Starting the Python runtime (Pyodide)");
  const { loadPyodide } = await import(new URL("pyodide.mjs", config.indexURL).href);
  const pyodide = await loadPyodide({ indexURL: config.indexURL, packages: config.packages });
  bootProgress(0.7, "Installing webllm_py");
  const micropip = pyodide.pyimport("micropip");
  for (const wheel of config.wheels) {
    await micropip.install.callKwargs(wheel, { deps: false });
  }
  micropip.destroy();
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
