"""web/webllm_py.js's Stream (what create() returns with stream: true) in Node, against the real Python handler: an
async iterable that is also openai-node's Stream. toReadableStream() is NDJSON bytes that Stream.fromReadableStream
reads back; tee() gives two full copies; cancelling the ReadableStream (even with a read on its way), breaking out of
`for await`, return() and controller.abort() end the generation in the worker and free the engine for the next
request; errors keep their class through the ReadableStream; tool-call deltas cross it as openai-python's types.
"""

from __future__ import annotations

import json

import openai.types.chat
from openai.lib.streaming.chat import ChatCompletionStreamState

from tests.unit import test_worker_handler as handler_tests
from tests.unit.test_tools_endpoints import ASK, SCRIPT, TOOLS, check_call
from tests.unit.test_worker_client import drive_js_proxy, needs_node
from tests.unit.test_worker_handler import ALPHABET
from webllm_py.worker.handler import WorkerHandler

world = handler_tests.world

DRIVER = r"""
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
const webllm = await import(pathToFileURL(process.argv[2]).href);
const { CreateWebWorkerMLCEngine, Stream } = webllm;

class StdioWorker extends EventTarget {
  postMessage(message) { process.stdout.write("MSG " + JSON.stringify(message) + "\n"); }
  terminate() {}
}
const worker = new StdioWorker();
createInterface({ input: process.stdin }).on("line", (line) =>
  worker.dispatchEvent(new MessageEvent("message", { data: JSON.parse(line) })));

const messages = [{ role: "user", content: "Hi" }];
const text = (chunks) => chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
const finishes = (chunks) => chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean);
const collect = async (iterable) => { const out = []; for await (const c of iterable) out.push(c); return out; };
const whole = async () => (await engine.chat.completions.create({ messages })).choices[0].message.content;
const create = (request) => engine.chat.completions.create({ messages, stream: true, ...request });
const caught = async (f) => { try { await f(); return "no error"; } catch (e) {
  return { name: e.name, field: e.field, typed: e instanceof webllm.WebLLMError, message: e.message }; } };
const out = {};
const engine = await CreateWebWorkerMLCEngine(worker, "fake-model");

// A plain stream, for reference.
const plain = await collect(await create({ stream_options: { include_usage: true } }));
out.plain = { text: text(plain), finishes: finishes(plain), n: plain.length };

// toReadableStream: NDJSON bytes, one chunk per line, pulled on demand.
let stream = await create({ stream_options: { include_usage: true } });
out.isStream = stream instanceof Stream && typeof stream.next === "function";
const rs = stream.toReadableStream();
out.readable = rs instanceof ReadableStream;
out.reused = await caught(() => collect(stream));  // the chunks went to the ReadableStream
const reader = rs.getReader();
const pieces = [];
while (true) { const { value, done } = await reader.read(); if (done) break; pieces.push(value); }
const bytes = Buffer.concat(pieces.map((p) => Buffer.from(p)));
out.ndjson = { bytes: pieces.every((p) => p instanceof Uint8Array), lines: bytes.toString("utf8").split("\n"),
               reads: pieces.length };

// ... and read back: Stream.fromReadableStream(toReadableStream()) gives the same chunks, split anyhow.
const back = await collect(Stream.fromReadableStream((await create({ stream_options: { include_usage: true } }))
  .toReadableStream()));
out.back = { text: text(back), n: back.length, same: JSON.stringify(back.map((c) => c.choices)) ===
             JSON.stringify(plain.map((c) => c.choices)) };
const enc = new TextEncoder();
const odd = new ReadableStream({ start(c) {
  c.enqueue(enc.encode('{"a": 1}\r\n{"b"')); c.enqueue(enc.encode(': "\u00e9')); c.enqueue(enc.encode('"}\n\n'));
  c.close(); } });
out.split = await collect(Stream.fromReadableStream(odd));
const strings = new ReadableStream({ start(c) { c.enqueue('{"s": 1}\n{"s"'); c.enqueue(": 2}"); c.close(); } });
out.strings = await collect(Stream.fromReadableStream(strings));
const bad = new ReadableStream({ start(c) { c.enqueue(enc.encode('{"a": 1}\nnot json\n')); c.close(); } });
out.badLine = await caught(() => collect(Stream.fromReadableStream(bad)));

// tee: both branches get every chunk, read one after the other.
const [left, right] = (await create({})).tee();
out.tee = { left: text(await collect(left)), right: text(await collect(right)) };

// Cancelling the ReadableStream with a read on its way ends the generation; the next request gets the engine.
const cancelled = (await create({})).toReadableStream().getReader();
const first = JSON.parse(new TextDecoder().decode((await cancelled.read()).value));
const pending = cancelled.read();
await cancelled.cancel();
out.cancel = { first: first.choices[0].delta.content ?? "", pending: (await pending).done, after: await whole() };

// Breaking out of for-await over a Stream read back from the NDJSON cancels the source too.
let got = [];
for await (const chunk of Stream.fromReadableStream((await create({})).toReadableStream())) {
  got.push(chunk); if (got.length === 3) break;
}
out.breakBack = { text: text(got), after: await whole() };

// A tee'd stream goes on while one branch reads; it ends when both branches stopped.
const [a, b] = (await create({})).tee();
got = [];
for await (const chunk of a) { got.push(chunk); if (got.length === 2) break; }
const bRest = [];
for await (const chunk of b) { bRest.push(chunk); if (bRest.length === 4) break; }
out.teeBreak = { a: text(got), b: text(bRest), after: await whole() };

// controller.abort() (openai-node's way), and return() before the first read.
stream = await create({});
got = [(await stream.next()).value, (await stream.next()).value];
stream.controller.abort();
out.abort = { text: text(got), next: await stream.next(), after: await whole() };
stream = await create({});
out.returned = { result: await stream.return(), next: await stream.next(), after: await whole() };

// An error keeps its class through the ReadableStream.
const failing = new Stream(async function* () { yield { n: 1 }; throw new webllm.EngineLostError("gone"); });
const failingReader = failing.toReadableStream().getReader();
await failingReader.read();
out.error = await caught(() => failingReader.read());

// Tool-call deltas, through the ReadableStream and back (Python validates them with openai-python).
const tools = %TOOLS%;
out.toolChunks = await collect(Stream.fromReadableStream((await engine.chat.completions.create(
  { messages: %ASK%, tools, stream: true })).toReadableStream()));
process.stdout.write("RESULT " + JSON.stringify(out) + "\n");
process.exit(0);
"""


class ToolScriptHandler(WorkerHandler):
    """The fake model says the tool-call script when a request has tools, the alphabet otherwise."""

    async def on_message(self, message):
        content = message.get("content")
        request = content.get("request") if isinstance(content, dict) else None
        if isinstance(request, dict):
            self.engine._slots["fake-model"].engine.say(SCRIPT if request.get("tools") else ALPHABET)
        return await super().on_message(message)


@needs_node
def test_js_stream_readable_tee_and_cancel(world, tmp_path):
    world.knobs.script = ALPHABET
    driver = DRIVER.replace("%TOOLS%", json.dumps(TOOLS)).replace("%ASK%", json.dumps(ASK))
    out, sent = drive_js_proxy(world, tmp_path, driver, handler_class=ToolScriptHandler)
    alphabet = "".join(ALPHABET)
    assert out["plain"]["text"] == alphabet and out["plain"]["finishes"] == ["stop"]
    assert out["isStream"] and out["readable"]
    assert out["reused"]["name"] == "TypeError" and "toReadableStream()" in out["reused"]["message"]

    # NDJSON: one chunk per read, each a JSON line ending in "\n"; the same chunks as the plain stream
    ndjson = out["ndjson"]
    assert ndjson["bytes"] and ndjson["lines"][-1] == "" and ndjson["reads"] == out["plain"]["n"]
    chunks = [json.loads(line) for line in ndjson["lines"][:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == alphabet
    assert (
        chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(ALPHABET) + 1
    )  # and the end token
    for c in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(c)
    assert out["back"] == {"text": alphabet, "n": out["plain"]["n"], "same": True}
    assert out["split"] == [{"a": 1}, {"b": "é"}]
    assert out["strings"] == [{"s": 1}, {"s": 2}]
    bad = out["badLine"]
    assert bad["name"] == "InvalidJSONError" and bad["typed"] and bad["field"] == "stream line 2"

    assert out["tee"] == {"left": alphabet, "right": alphabet}

    # every early stop ended its stream in the worker (an interrupt naming it) and freed the engine
    assert out["cancel"] == {"first": "a", "pending": True, "after": alphabet}
    assert out["breakBack"] == {"text": "abc", "after": alphabet}
    assert out["teeBreak"] == {"a": "ab", "b": "abcd", "after": alphabet}
    assert out["abort"]["text"] == "ab" and out["abort"]["next"] == {"done": True}
    assert out["abort"]["after"] == alphabet
    assert out["returned"] == {"result": {"done": True}, "next": {"done": True}, "after": alphabet}
    inits = [m["uuid"] for m in sent if m["kind"] == "chatCompletionStreamInit"]
    interrupted = [m["content"]["streamId"] for m in sent if m["kind"] == "interruptGenerate"]
    # streams 0-2 and the tee ran to the end; 4 (cancel), 5 (break), 6 (tee break), 7 (abort), 8 (return) did not
    assert interrupted == [inits[i] for i in (4, 5, 6, 7, 8)]
    assert out["error"]["name"] == "EngineLostError" and out["error"]["typed"]

    state = ChatCompletionStreamState()
    for c in out["toolChunks"]:
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(c))
    final = state.get_final_completion().choices[0]
    check_call(final.message, final.finish_reason)
    assert sum(1 for c in out["toolChunks"] for ch in c["choices"] if ch["delta"].get("tool_calls")) >= 2
