"""The site the WebLLM example pages run on: a folder of the test dist (``webllm-examples/``) deployed the way a user
deploys our module next to their pages: webllm_py.js, webllm_py_sw.js, worker.js and boot.js, its own boot config
(webllm_py.json: Pyodide and the wheels from the dist above) and model list, the helpers and prebuilt_models.mjs
(build.py's ``write_site_files``), and the example pages of tests/browser/webllm_examples/ under it.

The models: the examples' model ids are changed to these (WebLLM's MLC models cannot load here). SwiftShader runs a
135M model at a few tokens a second, so the examples run on a tiny random Llama (tests/kernels/tiny_llama.py: 2
layers, hidden 64, the 264-token byte-level vocabulary of the tokenizer tests, ChatML) built when the site is, not
committed; it talks nonsense, but every call an example makes is served by the real engine. The embedded SmolLM2
(the dist's models/) is there too, for the example that needs a load slow enough to abort.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SITE = "webllm-examples"
MODULE_FILES = ("webllm_py.js", "webllm_py_sw.js", "worker.js", "boot.js")

TINY = "tiny-llama-chat"  # what the examples load instead of WebLLM's models
TINY_2 = "tiny-llama-chat-2"  # a second model, for multi-models
TINY_EMBEDDING = "tiny-embedding"  # a record of model_type 1 (embedding), refused at load
TINY_VISION = "tiny-vision"  # model_type 2 (VLM), refused at load
SMOLLM2 = "SmolLM2-135M-Instruct-Q4_1"


def build_site(dist: Path) -> Path:
    """Build ``dist/webllm-examples`` (again, from the sources: cheap); returns it."""
    sys.path.insert(0, str(ROOT))
    import build
    from tests.kernels.tiny_llama import build_tiny_llama

    site = dist / SITE
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir()
    for name in MODULE_FILES:
        shutil.copyfile(ROOT / "web" / name, site / name)
    os.symlink("../pyodide", site / "pyodide")  # webllm_py_sw.js imports ./pyodide/ statically
    (site / "models").mkdir()
    tiny = build_tiny_llama(site / "models" / f"{TINY}.gguf", ctx=4096, seed=7)
    demo = json.loads((dist / "webllm_py.json").read_text())
    smollm2 = dict(demo["appConfig"]["model_list"][0])
    smollm2["model_url"] = "../" + smollm2["model_url"]
    url = f"models/{tiny.name}"
    size = tiny.stat().st_size
    entries = [
        {"model_id": TINY, "model_url": url, "size": size, "overrides": {"temperature": 0.7}},
        {"model_id": TINY_2, "model_url": url, "size": size},
        {"model_id": TINY_EMBEDDING, "model_url": url, "model_type": 1},
        {"model_id": TINY_VISION, "model_url": url, "model_type": 2},
        smollm2,
    ]
    boot = {
        "indexURL": "../pyodide/",
        "packages": demo["packages"],
        "wheels": ["../" + w for w in demo["wheels"]],
        "handler": demo["handler"],
        "helpers": "helpers/",
        "appConfig": {"model_list": entries},
    }
    (site / "webllm_py.json").write_text(json.dumps(boot, indent=2))
    build.write_site_files(site, entries)
    for example in HERE.iterdir():
        if example.is_dir() and not example.name.startswith(("_", ".")):
            shutil.copytree(example, site / example.name)
    # integrity-verification asks for the SRI hash of its model file; a copy gets a wrong one (another file's).
    page = site / "integrity-verification" / "index.html"
    template = page.read_text()
    page.write_text(template.replace("{{MODEL_SRI}}", sri(tiny.read_bytes())))
    tampered = site / "integrity-verification-tampered"
    tampered.mkdir()
    (tampered / "index.html").write_text(template.replace("{{MODEL_SRI}}", sri(tiny.read_bytes()[:-1])))
    (site / "vision-model" / "image.png").write_bytes(png(8, 8))  # the example's photos, offline
    return site


def sri(data: bytes) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode()


def png(width: int, height: int) -> bytes:
    """A grey RGB PNG (what the vision example reads into a canvas)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + bytes([128, 128, 128]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


EXTENSIONS = "webllm-examples-ext"


def build_extensions(dist: Path) -> dict[str, Path]:
    """Pack WebLLM's two extension examples (webllm_examples/_extensions/) the way a user packs ours: everything
    bundled (MV3 forbids remote code), the tiny model in IndexedDB (the Cache API takes no chrome-extension:// URLs).
    Returns name -> folder to load unpacked."""
    sys.path.insert(0, str(ROOT))
    import build

    site = dist / SITE  # build_site made the model
    out = {}
    for example in sorted((HERE / "_extensions").iterdir()):
        if not example.is_dir():
            continue
        folder = dist / EXTENSIONS / example.name
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(example, folder)
        for name in ("progressbar.js", "content.js"):
            shutil.copyfile(HERE / "_extensions" / name, folder / name)
        for name in MODULE_FILES:
            shutil.copyfile(ROOT / "web" / name, folder / name)
        shutil.copytree(dist / "pyodide", folder / "pyodide")
        shutil.copytree(dist / "wheels", folder / "wheels")
        (folder / "models").mkdir()
        shutil.copyfile(site / "models" / f"{TINY}.gguf", folder / "models" / f"{TINY}.gguf")
        demo = json.loads((dist / "webllm_py.json").read_text())
        entries = [{"model_id": TINY, "model_url": f"models/{TINY}.gguf", "overrides": {"temperature": 0.7}}]
        boot = {
            **demo,
            "helpers": "helpers/",
            "appConfig": {"model_list": entries, "cache_backend": "indexeddb"},
        }
        (folder / "webllm_py.json").write_text(json.dumps(boot, indent=2))
        build.write_site_files(folder, entries)
        out[example.name] = folder
    return out


def extension_id(folder: Path) -> str:
    """The id Chromium gives an unpacked extension: its absolute path's SHA-256, hex digits 0-f written a-p."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]
    return "".join(chr(ord("a") + int(c, 16)) for c in digest)
