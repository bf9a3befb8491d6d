"""A test handler for web/worker.js (installed into the test dist as its own wheel): runs Python sent by a test.

    {"kind": "exec", "uuid": u, "code": "..."}   runs ``code`` (top-level await allowed) with ``post`` and ``emit``
                                                 in scope; answers {"kind": "return", "uuid": u, "content": value of
                                                 the last expression} or {"kind": "throw", ..., {name, message}}
    {"kind": "echo", "uuid": u, ...}            answers the message itself with kind "echo"

``emit(obj)`` posts {"kind": "event", "uuid": u, "content": obj} while the code runs (progress reports).
"""

from __future__ import annotations

import traceback

from pyodide.code import eval_code_async

_globals: dict = {}  # shared by every exec, so one test can set up what the next uses


class Handler:
    def __init__(self, post):
        self.post = post

    async def on_message(self, msg: dict) -> None:
        uuid = msg.get("uuid", "")
        if msg.get("kind") == "echo":
            self.post({**msg, "kind": "echo"})
            return
        if msg.get("kind") != "exec":
            self.post({"kind": "throw", "uuid": uuid, "content": {"name": "ValueError", "message": f"{msg}"}})
            return

        def emit(obj):
            self.post({"kind": "event", "uuid": uuid, "content": obj})

        _globals.update(post=self.post, emit=emit)
        try:
            value = await eval_code_async(msg["code"], _globals)
        except BaseException as exc:
            self.post(
                {
                    "kind": "throw",
                    "uuid": uuid,
                    "content": {
                        "name": type(exc).__name__,
                        "message": str(exc),
                        "traceback": traceback.format_exc(),
                    },
                }
            )
            return
        self.post({"kind": "return", "uuid": uuid, "content": value})


def create_handler(post, app_config=None):  # the site app config is not used by the testkit
    return Handler(post)


# ---- helpers for test code run in the worker ------------------------------------------------------------------------


async def demo_record():
    """The demo model's record from the dist's boot config (its URL points at dist/models/)."""
    import json

    import js

    from webllm_py.config import ModelRecord

    boot = json.loads(await (await js.fetch("webllm_py.json")).text())
    return ModelRecord(**boot["appConfig"]["model_list"][0])


async def demo_app_config(backend: str = "cache", **record_changes):
    import dataclasses

    from webllm_py.config import AppConfig

    record = dataclasses.replace(await demo_record(), **record_changes)
    return record, AppConfig(model_list=[record], cache_backend=backend)
