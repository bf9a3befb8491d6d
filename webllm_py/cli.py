"""The ``webllm-py`` command (desktop, wgpu-py):

    webllm-py chat "Tell me a joke"                       # the reply, streamed to stdout
    webllm-py chat --model ID --system "Be brief" "..."    # any model of the app config
    webllm-py serve --host 127.0.0.1 --port 8000           # an OpenAI-compatible server on the desktop engine
    webllm-py serve --gguf ./model.gguf                    # a local GGUF file instead of a listed model

``serve`` answers ``/v1/chat/completions``, ``/v1/completions`` (both with SSE streaming) and ``/v1/models``
through the same endpoint code as the browser's service worker (``worker/local_endpoint.py``). Errors from the
engine (a bad argument, a model that does not load) are printed as ``ClassName: message`` with exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from . import errors
from .config import AppConfig, ModelRecord, prebuilt_app_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webllm-py", description="Run GGUF models on WebGPU (wgpu-py).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("chat", "answer one message"), ("serve", "serve the OpenAI API over HTTP")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--model", help="a model id of the app config (default: the first prebuilt model)")
        p.add_argument("--gguf", help="a local GGUF file to run (its model id: --model, else the file name)")
        p.add_argument(
            "--context-window-size", type=int, help="KV cache positions (default: the model's, <= 4096)"
        )
        if name == "chat":
            p.add_argument("message", help="the user message")
            p.add_argument("--system", help="a system message")
            p.add_argument("--max-tokens", type=int, help="most tokens in the reply")
            p.add_argument("--temperature", type=float, help="sampling temperature, 0 for greedy")
            p.add_argument("--seed", type=int, help="seed of the sampler's random stream")
        else:
            p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
            p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0: any free one)")
    return parser


def _model(args: argparse.Namespace) -> tuple[str, AppConfig]:
    """The model id to load and the app config that has it."""
    if args.gguf:
        model_id = args.model or os.path.splitext(os.path.basename(args.gguf))[0]
        record = ModelRecord(model_id, os.path.abspath(args.gguf))
        return model_id, AppConfig(model_list=[*prebuilt_app_config.model_list, record])
    return args.model or prebuilt_app_config.model_list[0].model_id, prebuilt_app_config


def _progress(report) -> None:
    print(f"\r[{report.progress * 100:5.1f}%] {report.text[:70]:<70}", end="", file=sys.stderr, flush=True)


async def _load(args: argparse.Namespace):
    from .api.mlc_engine import MLCEngine  # the GPU stack only once a command runs

    model_id, app_config = _model(args)
    engine = MLCEngine(app_config=app_config, init_progress_callback=_progress)
    await engine.reload(model_id, context_window_size=args.context_window_size)
    print(file=sys.stderr)
    return engine


async def chat(args: argparse.Namespace) -> int:
    engine = await _load(args)
    try:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.message}
        ]
        knobs = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}
        stream = await engine.chat.completions.create(messages=messages, stream=True, **knobs)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
    finally:
        await engine.unload()
    return 0


async def serve(args: argparse.Namespace, *, ready: asyncio.Future | None = None) -> int:
    from .host.http_server import OpenAIServer

    engine = await _load(args)
    server = OpenAIServer(engine)
    try:
        host, port = await server.start(args.host, args.port)
        print(
            f"Serving {engine.model_id} at http://{host}:{port}/v1 (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        if ready is not None:
            ready.set_result((host, port))
        await server.serve_forever()
    finally:
        await server.close()
        await engine.unload()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = chat if args.command == "chat" else serve
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    except errors.WebLLMError as e:
        print(f"\n{type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
