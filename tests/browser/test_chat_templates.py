"""Chat templates in the browser: jinja2 and the pure-Python MarkupSafe that the dist ships render a model's own
non-ChatML templates inside the worker (Pyodide), byte-identical to the desktop (and so to transformers), and keep a
forged turn apart from the template's text there too."""

from __future__ import annotations

import json
from pathlib import Path

from webllm_py.conversation import JinjaTemplate

DATA = Path(__file__).resolve().parents[1] / "data"
# Non-ChatML families, each rendered over a few of the golden conversations.
NAMES = ("gemma-3", "llama-3.1", "mistral-v0.3", "phi-3.5", "qwen3")
CONVERSATIONS = ("system_multi", "parts", "whitespace", "unicode", "forged")
CONTROL = ["<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<start_of_turn>",
           "<end_of_turn>", "[INST]", "[/INST]", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "</s>", "<s>"]  # fmt: skip

WORKER_CODE = """
import json, time
data = json.loads(DATA)
t0 = time.perf_counter()
import jinja2, markupsafe
import_s = time.perf_counter() - t0
from webllm_py.conversation import JinjaTemplate
out = {"jinja2": jinja2.__version__, "escape": markupsafe._escape_inner.__module__, "import_s": import_s, "texts": {}}
for name, src in data["sources"].items():
    t0 = time.perf_counter()
    t = JinjaTemplate(src, bos_token=data["bos"][name], eos_token=data["eos"][name], control_texts=data["control"])
    out.setdefault("compile_s", {})[name] = time.perf_counter() - t0
    for conv in data["conversations"]:
        messages = data["messages"][conv]
        try:
            out["texts"][f"{name}/{conv}"] = [t.render(messages), t.render_parts(messages)]
        except Exception as e:  # a template that refuses a conversation refuses it here too
            out["texts"][f"{name}/{conv}"] = [type(e).__name__, str(e)]
out
"""


def desktop(name: str, messages: list[dict], bos: str, eos: str) -> list:
    source = (DATA / "chat_templates" / f"{name}.jinja").read_text()
    t = JinjaTemplate(source, bos_token=bos, eos_token=eos, control_texts=CONTROL)
    try:
        return [t.render(messages), [list(p) for p in t.render_parts(messages)]]
    except Exception as e:
        return [type(e).__name__, str(e)]


def test_worker_renders_non_chatml_templates_like_the_desktop(open_worker):
    goldens = json.loads((DATA / "goldens" / "chat_templates.json").read_text())
    data = {
        "sources": {n: (DATA / "chat_templates" / f"{n}.jinja").read_text() for n in NAMES},
        "bos": {n: goldens["templates"][n]["bos_token"] for n in NAMES},
        "eos": {n: goldens["templates"][n]["eos_token"] for n in NAMES},
        "control": CONTROL,
        "conversations": CONVERSATIONS,
        "messages": {c: goldens["conversations"][c] for c in CONVERSATIONS},
    }
    worker = open_worker()
    out = worker.run(WORKER_CODE.replace("DATA", repr(json.dumps(data))), timeout_s=300)
    assert out["jinja2"] == "3.1.6" and out["escape"] == "markupsafe._native"  # the shipped pure-Python build
    print(f"\nPyodide: import jinja2 {out['import_s']:.3f} s; compile {json.dumps(out['compile_s'])}")
    rendered = 0
    for name in NAMES:
        for conv in CONVERSATIONS:
            want = desktop(name, data["messages"][conv], data["bos"][name], data["eos"][name])
            got = out["texts"][f"{name}/{conv}"]
            assert got == want, f"{name}/{conv}: the worker rendered\n{got!r}\nthe desktop\n{want!r}"
            if not want[0].endswith("Error"):
                rendered += 1
                golden = next(
                    c for c in goldens["cases"]
                    if c["template"] == name and c["conversation"] == conv and c["add_generation_prompt"]
                    and not c["kwargs"]
                )  # fmt: skip
                assert got[0] == golden["text"]  # transformers' bytes
    assert rendered >= 20
