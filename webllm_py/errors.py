"""One exception class per user-visible failure.

Every message names what was wrong (the field, the file, the value) and what is allowed, so a user knows what to
fix without reading our code. The class name is part of the contract: errors cross the worker boundary as
``{name, message}`` and are raised again under the same name on the other side.
"""

from __future__ import annotations

import reprlib


class WebLLMError(Exception):
    """Base class of every error this package raises on purpose."""


# ---- model files ------------------------------------------------------------------------------------------------


class GGUFError(WebLLMError):
    """A GGUF file is truncated, corrupt or uses something we do not support.

    ``source`` names the file (path or URL), ``offset`` the byte where reading failed, ``expected`` what should
    have been there.
    """

    def __init__(self, source: str, offset: int, expected: str, found: str | None = None):
        self.source = source
        self.offset = offset
        self.expected = expected
        self.found = found
        detail = f"; found {found}" if found is not None else ""
        super().__init__(f"{source}: at byte offset {offset}: expected {expected}{detail}")


class GGUFMetadataError(GGUFError):
    """A GGUF metadata key is missing, has the wrong type, or holds a value outside what a model can have
    (``block_count`` 0, a NaN ``rope.freq_base``). ``key`` names it; ``expected`` says what is allowed."""

    def __init__(self, source: str, key: str, expected: str, found: str | None = None):
        self.key = key
        super().__init__(source, 0, f"metadata key {key!r} to be {expected}", found)


class CorruptWeightsError(GGUFError):
    """A tensor holds values no trained model has: NaN or infinite quantization scales, norm weights or biases.
    ``tensor`` names it; the model is not loaded (nothing already loaded is touched)."""

    def __init__(self, source: str, tensor: str, problem: str):
        self.tensor = tensor
        self.problem = problem
        super().__init__(source, 0, f"finite values in tensor {tensor!r}", problem)


class UnsupportedModelError(WebLLMError):
    """The model's architecture or a tensor's quantization type is not one we can run."""


class ModelNotFoundError(WebLLMError):
    """A model id is not in the app config's model list."""


class ModelDownloadError(WebLLMError):
    """Fetching model weights failed (network, HTTP status, size mismatch)."""


class TokenizerError(WebLLMError):
    """The GGUF's vocabulary is inconsistent (an id out of range, a missing list), or a token id is invalid."""


class UnsupportedTokenizerError(UnsupportedModelError):
    """The GGUF's ``tokenizer.ggml.model`` or ``tokenizer.ggml.pre`` is not one we implement; the message names
    the value and the supported ones."""


# ---- GPU ----------------------------------------------------------------------------------------------------------


class WebGPUNotAvailableError(WebLLMError):
    """No WebGPU adapter could be found on this machine or in this browser."""


class DeviceLimitError(WebLLMError):
    """The GPU adapter lacks a limit or a feature the model needs."""


class DeviceLostError(WebLLMError):
    """The GPU device was lost while the engine was using it."""


class GPUValidationError(WebLLMError):
    """WebGPU rejected a call: a shader this browser's compiler refuses, a binding over a limit. Reported by the
    browser asynchronously and raised at the engine's next read, so a broken kernel never yields silent garbage."""


# ---- conversation and requests --------------------------------------------------------------------------------------


class UnknownChatTemplateError(WebLLMError):
    """The model has no chat template we can use: the GGUF has none and the caller passed none, or (without jinja2)
    the GGUF's template is not one of the families we render without it."""


class ChatTemplateError(WebLLMError):
    """The model's chat template (Jinja) does not compile, or failed while rendering (an undefined variable, a
    sandbox violation, a type error in the template's own code). A template that refuses the messages on purpose
    (``raise_exception``) gives ``InvalidMessagesError`` instead."""


class ContextWindowSizeExceededError(WebLLMError):
    """The prompt (plus what was already in the KV cache) does not fit the model's context window."""


class InvalidRequestError(WebLLMError):
    """A request field has a value outside what is allowed; the message names the field and the limit."""


class EngineNotLoadedError(WebLLMError):
    """A request was made before any model was loaded (call reload() or CreateMLCEngine first)."""


class EngineBusyError(WebLLMError):
    """``Engine.generate`` was called while the model's previous generation was still open (the low-level API;
    ``MLCEngine`` queues requests instead)."""


# ---- request validation (protocol.py) -------------------------------------------------------------------------------
# Each subclass of InvalidRequestError is one kind of failure. ``field`` is the request field as the caller wrote it
# (``temperature``, ``messages[2].content``), so a client can point at it without parsing the message.


_REPR = reprlib.Repr()
_REPR.maxlevel = 3  # a list nested 3,000 deep shows as [[[...]]], never a RecursionError
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def _show(value: object) -> str:
    """A short repr for error messages, whatever the value: a 5 MB prompt, a list nested 3,000 deep, an integer of
    10,000 digits (whose repr Python refuses) or an object whose __repr__ fails all end up as a few dozen
    characters, never a second error."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        text = f"<an integer of {value.bit_length()} bits>"
    else:
        try:
            text = _REPR.repr(value)
        except Exception:
            text = f"<a {type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


class UnsupportedFieldError(InvalidRequestError):
    """An OpenAI request field we do not implement (yet), or a field OpenAI does not have."""

    def __init__(self, field: str, value: object, reason: str):
        self.field = field
        self.value = value
        super().__init__(f"`{field}` is not supported ({reason}); got {_show(value)}")


class InvalidRangeError(InvalidRequestError):
    """A numeric field is outside its allowed range, or a count is above its limit."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"`{field}` must be {allowed}; got {_show(value)}")


class InvalidFieldTypeError(InvalidRequestError):
    """A field has the wrong JSON type (e.g. ``seed`` is a float, ``stop`` is a number)."""

    def __init__(self, field: str, value: object, expected: str):
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"`{field}` must be {expected}; got {_show(value)} ({type(value).__name__})")


class FieldDependencyError(InvalidRequestError):
    """A field is only allowed together with another (``stream_options`` needs ``stream=True``)."""

    def __init__(self, field: str, requires: str):
        self.field = field
        self.requires = requires
        super().__init__(f"`{field}` is only allowed when {requires}")


class InvalidMessagesError(InvalidRequestError):
    """``messages`` is missing, empty, or breaks a rule on roles, order or content."""

    def __init__(self, field: str, reason: str):
        self.field = field
        super().__init__(f"`{field}`: {reason}")


class _NamedFieldError(InvalidRequestError):
    """An error about one request field, named by the class (``field``), with the value given (``value``)."""

    field = ""

    def __init__(self, message: str, value: object = None):
        super().__init__(message)
        self.field = type(self).field  # an instance attribute, so it crosses the worker boundary in `details`
        self.value = value


class SpecifiedModelNotFoundError(_NamedFieldError):
    """The request's ``model`` names a model this engine has not loaded."""

    field = "model"


class UnclearModelToUseError(_NamedFieldError):
    """Several models are loaded and the request's ``model`` does not say which one to use."""

    field = "model"


class ReloadModelIdNotUniqueError(_NamedFieldError):
    """``reload()`` was given the same model id more than once."""

    field = "model_id"


class InvalidJSONError(InvalidRequestError):
    """A request body or a worker message is not JSON a request can be made of: it does not parse, nests deeper
    than ``protocol.MAX_JSON_DEPTH``, holds NaN or Infinity, or holds text that is not valid Unicode (a lone UTF-16
    surrogate). ``field`` names where (``body``, ``content.request.messages[0].content``)."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"`{field}`: {reason}")


class RequestTooLargeError(InvalidRequestError):
    """A request body is larger than the endpoint accepts (HTTP 413); ``limit`` is that size in bytes."""

    def __init__(self, field: str, size: int, limit: int):
        self.field = field
        self.size = size
        self.limit = limit
        super().__init__(f"`{field}` is {size} bytes; the limit is {limit} bytes")


class InvalidAppConfigError(WebLLMError, ValueError):
    """An app config or model record is malformed (a duplicate model id, an unknown cache backend, a field of the
    wrong type); ``field`` names it (``appConfig.model_list[2].size``)."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"`{field}` must be {allowed}; got {_show(value)}")


class ServerSentEventsError(WebLLMError):
    """An SSE body (``api/sse.py``) is malformed, or the server reported an error in the stream."""


# ---- model files (download.py) --------------------------------------------------------------------------------------


class ModelIntegrityError(ModelDownloadError):
    """A downloaded file's sha256 or size differs from what the model record promises."""


class IntegrityError(ModelIntegrityError):
    """WebLLM's ``IntegrityError``: a downloaded file's digest differs from the SRI string its model record's
    ``integrity`` gives for it (``sha256-``/``sha384-``/``sha512-`` + base64). ``url`` names the file, ``expected``
    and ``actual`` are SRI strings of the same algorithm. Nothing of the file is kept."""

    def __init__(self, url: str, expected: str, actual: str):
        self.url = url
        self.expected = expected
        self.actual = actual
        super().__init__(f"Integrity check of {url} failed: expected {expected}, got {actual}")


class StorageQuotaError(ModelDownloadError):
    """The browser's storage quota for this site cannot hold the model (checked before downloading, and raised
    when the browser refuses a write with QuotaExceededError)."""


# ---- the worker boundary (worker/handler.py, worker/client.py, web/webllm_py.js) ------------------------------------


class UnsupportedEndpointError(WebLLMError):
    """The engine behind a worker does not implement this API (e.g. text ``completions.create``)."""


class ReloadAbortedError(WebLLMError):
    """A ``reload()`` was aborted by ``unload()`` or by a newer ``reload()`` before its model was loaded. Crosses
    the worker boundary only: the proxies resolve the aborted ``reload()`` with a warning, as WebLLM does."""


class UnknownMessageKindError(WebLLMError):
    """A worker message has a ``kind`` outside the closed set in ``worker/messages.py``, or a malformed
    envelope."""


class WorkerError(WebLLMError):
    """An error from the worker whose name is not a class of this package (a bug, or a Python built-in we do not
    map), or the worker itself failed (it crashed, was terminated, or a message could not be cloned).

    ``name`` is the remote class name (``"ZeroDivisionError"``), so nothing is lost crossing the boundary.
    """

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(f"{name}: {message}" if name else message)


# ---- service-worker hosts (worker/service_worker.py, worker/service_worker_client.py, web/webllm_py.js) -----------


class EngineLostError(WorkerError):
    """The service worker serving this engine stopped answering, or the browser stopped it while it held this
    request (its ``heartbeat`` no longer lists it), or an extension's port disconnected. The request will not be
    answered; the next one starts the worker again, which reloads the model from the cache."""

    name = "EngineLostError"

    def __init__(self, message: str):
        super().__init__("", message)
        self.name = "EngineLostError"


class WorkerBootError(WorkerError):
    """The worker could not start Python (Pyodide or a wheel failed to load, its config file is missing); every
    request to it is answered with this error and its reason."""

    name = "WorkerBootError"

    def __init__(self, message: str):
        super().__init__("", message)
        self.name = "WorkerBootError"


class WebAssemblyBlockedError(WebLLMError):
    """The worker cannot compile WebAssembly, so Pyodide cannot start: the context's Content Security Policy lacks
    ``'wasm-unsafe-eval'`` (in a Chrome extension: ``content_security_policy.extension_pages`` in manifest.json)."""


# ---- structured output (webllm_py/grammar/) -------------------------------------------------------------------------


class UnsupportedSchemaError(InvalidRequestError):
    """A JSON Schema uses a keyword the grammar engine does not enforce (``uniqueItems``, ``not``, a ``format``
    we do not know), or a value it cannot satisfy. ``field`` is the JSON pointer of the schema object that holds
    it (``#/properties/tags``), ``keyword`` the keyword; nothing is ignored silently."""

    def __init__(self, field: str, keyword: str, reason: str):
        self.field = field
        self.keyword = keyword
        self.reason = reason
        super().__init__(f"JSON schema {field}: `{keyword}` {reason}")


class InvalidGrammarError(InvalidRequestError):
    """An EBNF grammar or a regular expression does not parse, or cannot be run (undefined rule, left
    recursion, a regex feature such as a lookahead). ``kind`` is ``"ebnf"`` or ``"regex"``; ``line`` and
    ``column`` (1-based, None when not tied to a place) point at the problem."""

    def __init__(self, kind: str, reason: str, line: int | None = None, column: int | None = None):
        self.kind = kind
        self.reason = reason
        self.line = line
        self.column = column
        where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"{kind} grammar{where}: {reason}")


class GrammarLimitError(InvalidRequestError):
    """A grammar or schema would need more than ``limit`` of ``what`` (automaton states, parser stacks): it is
    refused rather than built for minutes. Smaller bounds (``maxLength``, ``maxItems``, ``{m,n}``) help."""

    def __init__(self, what: str, limit: int):
        self.what = what
        self.limit = limit
        super().__init__(
            f"the grammar needs more than {limit} {what}; simplify it (smaller repetition bounds)"
        )
