// The engine in a module service worker: one loaded model for every tab of the origin, and a local OpenAI
// endpoint (POST v1/chat/completions, v1/completions; GET v1/models under the worker's scope).
//
//   navigator.serviceWorker.register("./sw.js", { type: "module", scope: "./" });
//   const engine = await CreateServiceWorkerMLCEngine("SmolLM2-135M-Instruct-Q4_1");      // from webllm_py.js
//   const reply = await fetch("v1/chat/completions", { method: "POST", body: JSON.stringify({ messages }) });
//
// The configuration is worker.js's (boot.js: webllm_py.json next to this script), except that Pyodide must sit in
// pyodide/ next to this script: a service worker cannot import() (Pyodide's own loader does), so the runtime is
// imported statically below. The Python side is webllm_py/host/service_worker_entry.py; the protocol is
// webllm_py/worker/messages.py, served by webllm_py/worker/service_worker.py.
//
// The browser stops an idle service worker (after ~30 s) and may stop a busy one; the next message or fetch starts
// this script again, which boots Pyodide again, and the first request reloads its model (from the browser cache).
// Listeners are registered synchronously here, as the spec requires for a restarted worker to get its events.

import { loadPyodide } from "./pyodide/pyodide.mjs";
import createPyodideModule from "./pyodide/pyodide.asm.mjs";
import { checkWebAssembly, installWheels, loadConfig } from "./boot.js";

const started = performance.now();
const clientsById = new Map(); // id -> the Client (tab) that sent a message, for its replies

async function boot() {
  const config = await loadConfig(import.meta.url);
  await checkWebAssembly();
  await progressToAll(0, "Starting the Python runtime (Pyodide) in the service worker");
  const pyodide = await loadPyodide({
    indexURL: new URL("./pyodide/", import.meta.url).href,
    packages: config.packages,
    createPyodideModule,
  });
  await progressToAll(0.7, "Installing webllm_py");
  await installWheels(pyodide, config.wheels);
  const entry = pyodide.pyimport("webllm_py.host.service_worker_entry");
  entry.start(postToClient, isAlive, config.appConfig);
  await progressToAll(1, `Python runtime ready (${((performance.now() - started) / 1000).toFixed(1)} s)`);
  return entry;
}

let booted = false;
const ready = boot();
ready.then(
  () => (booted = true),
  (error) => console.error("webllm_py service worker failed to boot:", error),
);
// While Python boots, keepAlive is answered here (a heartbeat listing the requests waiting for the boot), so a
// client does not count the boot's seconds as missed heartbeats. Afterwards the Python handler answers it.
const waitingForBoot = new Map(); // client id -> uuids of its requests queued until the boot ends

function postToClient(clientId, message) {
  const client = clientsById.get(clientId);
  if (client) client.postMessage(message);
}

async function isAlive(clientId) {
  const client = await self.clients.get(clientId);
  if (!client) clientsById.delete(clientId);
  return Boolean(client);
}

async function progressToAll(progress, text) {
  const content = { progress, timeElapsed: (performance.now() - started) / 1000, text };
  for (const client of clientsById.values()) client.postMessage({ kind: "initProgressCallback", uuid: "", content });
}

// A new version takes over at once and controls the open tabs, so the first visit can talk to it without a reload.
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

// A reply to a message this worker cannot take, sent straight to its client (the page's proxy logs one without a uuid).
function refuse(client, uuid, name, message) {
  client.postMessage({ kind: "throw", uuid: typeof uuid === "string" ? uuid : "", content: { name, message } });
}

self.addEventListener("message", (event) => {
  const client = event.source;
  const data = event.data;
  if (!client || !client.id) return; // nobody to answer
  if (data === null || typeof data !== "object") {
    refuse(client, "", "UnknownMessageKindError", `a worker message must be {kind, uuid, content}; got ${String(data)}`);
    return;
  }
  clientsById.set(client.id, client);
  if (!booted && data.kind === "keepAlive") {
    const pending = [...(waitingForBoot.get(client.id) || [])];
    client.postMessage({ kind: "heartbeat", uuid: data.uuid, content: { pending } });
    return;
  }
  if (!booted) {
    if (!waitingForBoot.has(client.id)) waitingForBoot.set(client.id, new Set());
    waitingForBoot.get(client.id).add(data.uuid);
  }
  // waitUntil keeps the worker alive until this request is answered (a stream: until this chunk is).
  event.waitUntil(
    ready.then(
      async (entry) => {
        const promise = entry.on_message(client.id, data); // takes the request before the next one is dispatched
        waitingForBoot.get(client.id)?.delete(data.uuid);
        try {
          await promise;
        } catch (error) {
          // on_message answers everything itself; this is the Python runtime failing (out of memory, a crash)
          refuse(client, data.uuid, "WorkerError", String((error && error.message) || error));
        }
      },
      (error) => refuse(client, data.uuid, "WorkerBootError", String((error && error.message) || error)),
    ),
  );
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  const scope = new URL(self.registration.scope);
  if (url.origin !== scope.origin || !url.pathname.startsWith(scope.pathname + "v1/")) return; // the network's
  event.respondWith(answerFetch(event.request, url.pathname.slice(scope.pathname.length)));
});

async function answerFetch(request, route) {
  let entry;
  try {
    entry = await ready;
  } catch (error) {
    const body = { error: { message: String(error && error.message), type: "server_error", param: null, code: "WorkerBootError" } };
    return new Response(JSON.stringify(body), { status: 503, headers: { "Content-Type": "application/json" } });
  }
  let answer;
  try {
    const body = request.method === "GET" || request.method === "HEAD" ? null : await request.text();
    answer = await entry.on_fetch(request.method, route, body);
  } catch (error) {
    // on_fetch answers every request itself; this is the runtime failing, still answered in OpenAI's shape
    const body = { error: { message: String(error && error.message), type: "server_error", param: null, code: "WorkerError" } };
    return new Response(JSON.stringify(body), { status: 500, headers: { "Content-Type": "application/json" } });
  }
  if (!answer.stream) return new Response(answer.body || null, { status: answer.status, headers: answer.headers });
  const events = answer.stream;
  const encoder = new TextEncoder();
  let open = true;
  const finish = () => {
    if (open) events.destroy();
    open = false;
  };
  const stream = new ReadableStream({
    async pull(controller) {
      const text = await events.next();
      if (text === undefined || text === null) {
        finish();
        controller.close();
      } else {
        controller.enqueue(encoder.encode(text));
      }
    },
    async cancel() {
      // The page stopped reading (aborted the fetch, closed the tab): end its generation in the engine.
      if (open) await events.close();
      finish();
    },
  });
  return new Response(stream, { status: answer.status, headers: answer.headers });
}
