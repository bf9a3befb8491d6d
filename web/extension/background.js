// The engine in a Chrome extension's (MV3) service worker: one model for the popup and every extension page, each
// connected over a chrome.runtime Port named "web_llm_service_worker" (CreateExtensionServiceWorkerMLCEngine in
// webllm_py.js). `python3 build.py extension` packs this folder with Pyodide, the wheel, the model and boot.js.
//
// Everything is bundled (MV3 forbids remote code). The manifest's CSP must allow 'wasm-unsafe-eval', or Pyodide
// cannot compile: boot.js checks that first and every request is then answered with an error saying so. `eval` stays
// forbidden, so the Python host's JS helpers are imported here as modules instead of evaluated (run_js).

import { loadPyodide } from "./pyodide/pyodide.mjs";
import createPyodideModule from "./pyodide/pyodide.asm.mjs";
import { checkWebAssembly, installWheels, loadConfig } from "./boot.js";
import gpu from "./helpers/gpu_helper.mjs";
import cache from "./helpers/cache_helper.mjs";

globalThis.webllmPyHelpers = { gpu, cache }; // webllm_py/host/browser.py preloaded_helper

const PORT_NAME = "web_llm_service_worker";
const ports = new Map(); // port id -> chrome.runtime.Port
let portCount = 0;
let booted = false;
const waitingForBoot = new Map(); // port id -> uuids of its requests queued until the boot ends

async function boot() {
  const config = await loadConfig(import.meta.url);
  await checkWebAssembly();
  const pyodide = await loadPyodide({
    indexURL: new URL("./pyodide/", import.meta.url).href,
    packages: config.packages,
    createPyodideModule,
  });
  await installWheels(pyodide, config.wheels);
  const entry = pyodide.pyimport("webllm_py.host.service_worker_entry");
  const post = (id, message) => ports.get(id)?.postMessage(message);
  entry.start(post, (id) => ports.has(id), config.appConfig, true);
  booted = true;
  return entry;
}

const ready = boot();
ready.catch((error) => console.error("webllm_py extension service worker failed to boot:", error));

// Registered synchronously at top level: a restarted worker gets the connection that woke it.
chrome.runtime.onConnect.addListener((port) => {
  if (port.name !== PORT_NAME) return;
  portCount += 1;
  const id = `port-${portCount}`;
  ports.set(id, port);
  const connected = ready.then((entry) => entry.connect(id));
  port.onMessage.addListener((data) => {
    if (data === null || typeof data !== "object") return;
    if (!booted && data.kind === "keepAlive") {
      port.postMessage({ kind: "heartbeat", uuid: data.uuid, content: { pending: [...(waitingForBoot.get(id) || [])] } });
      return;
    }
    if (!booted) {
      if (!waitingForBoot.has(id)) waitingForBoot.set(id, new Set());
      waitingForBoot.get(id).add(data.uuid);
    }
    connected.then(
      async () => {
        const entry = await ready;
        const promise = entry.on_message(id, data);
        waitingForBoot.get(id)?.delete(data.uuid);
        await promise;
      },
      (error) => {
        const message = String((error && error.message) || error);
        if (ports.has(id)) port.postMessage({ kind: "throw", uuid: data.uuid || "", content: { name: "WorkerBootError", message } });
      },
    );
  });
  port.onDisconnect.addListener(() => {
    ports.delete(id);
    waitingForBoot.delete(id);
    ready.then((entry) => entry.disconnect(id)).catch(() => {});
  });
});
