// The popup: a chat with the model in the extension's service worker (background.js). ?q=...&max_tokens=N asks one
// question at once and marks <body data-done> when the answer is complete (the tests use it).
import { CreateExtensionServiceWorkerMLCEngine } from "./webllm_py.js";

const status = document.getElementById("status");
const out = document.getElementById("out");
const question = document.getElementById("question");
const send = document.getElementById("send");
const params = new URLSearchParams(location.search);
const messages = [];
window.progress = []; // the load's reports (a test checks that a second popup does not load the model again)

function fail(error) {
  status.textContent = `${error.name}: ${error.message}`;
  document.body.dataset.error = status.textContent;
}

async function ask(engine, text) {
  send.disabled = true;
  messages.push({ role: "user", content: text });
  out.textContent = "";
  const maxTokens = params.has("max_tokens") ? Number(params.get("max_tokens")) : 256;
  const chunks = await engine.chat.completions.create({ messages, stream: true, max_tokens: maxTokens });
  for await (const chunk of chunks) out.textContent += chunk.choices[0]?.delta.content ?? "";
  messages.push({ role: "assistant", content: await engine.getMessage() });
  send.disabled = false;
}

try {
  const site = await (await fetch("webllm_py.json")).json();
  const engine = await CreateExtensionServiceWorkerMLCEngine(site.appConfig.model_list[0].model_id, {
    initProgressCallback: (report) => {
      window.progress.push(report);
      status.textContent = report.text;
    },
    onEngineLost: (error) => (status.textContent = error.message),
  });
  window.engine = engine; // for the tests, and the console
  status.textContent = `Ready: ${engine.modelId}`;
  send.disabled = false;
  send.onclick = () => ask(engine, question.value).catch(fail);
  if (params.has("q")) {
    await ask(engine, params.get("q"));
    document.body.dataset.done = "1";
  }
} catch (error) {
  fail(error);
}
