"""WebLLM's cache functions (``src/cache_util.ts``), usable without an engine: is a model's file stored, and
removing it. On the desktop the cache is ``app_config.cache_dir`` (``model/download.py``); in Pyodide it is the
browser storage ``app_config.cache_backend`` names (``host/browser_cache.py``), the one the worker fills.

A GGUF holds its weights, tokenizer and chat template in one file (or its shards), so ``deleteModelAllInfoInCache``
removes what ``deleteModelInCache`` does, and there is never a model library or chat config to delete apart
(``deleteModelWasmInCache`` and ``deleteChatConfigInCache`` check the id and remove nothing).
"""

from __future__ import annotations

import asyncio
import sys

from webllm_py.config import AppConfig, prebuilt_app_config


def _record(model_id: str, app_config: AppConfig | None):
    config = app_config or prebuilt_app_config
    return config.get_record(model_id), config  # ModelNotFoundError for an unknown id


async def hasModelInCache(model_id: str, app_config: AppConfig | None = None) -> bool:
    """True when every file of ``model_id`` is in the cache (a local-path record: when the file exists)."""
    record, config = _record(model_id, app_config)
    if sys.platform == "emscripten":
        from webllm_py.host import browser_cache

        return await browser_cache.has_model_in_cache(record, config)
    from webllm_py.model.download import cached_model_files

    return await asyncio.to_thread(cached_model_files, record, config) is not None


async def deleteModelInCache(model_id: str, app_config: AppConfig | None = None) -> None:
    """Remove ``model_id``'s files from the cache (a no-op when absent; a local file is never touched)."""
    record, config = _record(model_id, app_config)
    if sys.platform == "emscripten":
        from webllm_py.host import browser_cache

        await browser_cache.delete_model_in_cache(record, config)
        return
    from webllm_py.model.download import delete_cached_model

    await asyncio.to_thread(delete_cached_model, record, config)


async def deleteModelAllInfoInCache(model_id: str, app_config: AppConfig | None = None) -> None:
    """Everything stored for ``model_id``: for a GGUF, its files (``deleteModelInCache``)."""
    await deleteModelInCache(model_id, app_config)


async def deleteModelWasmInCache(model_id: str, app_config: AppConfig | None = None) -> None:
    """A GGUF model has no model library: nothing is stored, so nothing is removed (the id is checked)."""
    _record(model_id, app_config)


async def deleteChatConfigInCache(model_id: str, app_config: AppConfig | None = None) -> None:
    """A GGUF's chat config is inside the file: nothing is stored apart (the id is checked)."""
    _record(model_id, app_config)
