"""webllm_py: WebLLM re-built in Python. Quantized GGUF LLMs on WebGPU, in the browser (Pyodide) and on the
desktop (wgpu-py), behind WebLLM's OpenAI-shaped API::

    import webllm_py
    engine = await webllm_py.CreateMLCEngine("SmolLM2-135M-Instruct-Q4_1")
    reply = await engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])

Public names only. Importing the package must stay cheap and host-neutral: no wgpu, no numpy, no GPU code; the
engine is imported when a model is first loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .api.builder import Messages
from .api.cache import (
    deleteChatConfigInCache,
    deleteModelAllInfoInCache,
    deleteModelInCache,
    deleteModelWasmInCache,
    hasModelInCache,
)
from .api.chat import ChatCompletionStream, ChatCompletionStreamSync
from .api.mlc_engine import CreateMLCEngine, InitProgressReport, MLCEngine, MLCEngineSync
from .api.sse import aparse_sse, parse_sse, sse_event, to_sse
from .api.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionTokenLogprob,
    Choice,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionUsage,
    TopLogprob,
)
from .config import (
    AppConfig,
    ModelIntegrity,
    ModelRecord,
    functionCallingModelIds,
    modelLibURLPrefix,
    modelVersion,
    prebuilt_app_config,
)
from .errors import (
    ChatTemplateError,
    ContextWindowSizeExceededError,
    CorruptWeightsError,
    DeviceLimitError,
    DeviceLostError,
    EngineBusyError,
    EngineLostError,
    EngineNotLoadedError,
    FieldDependencyError,
    GGUFError,
    GGUFMetadataError,
    GPUValidationError,
    GrammarLimitError,
    IntegrityError,
    InvalidAppConfigError,
    InvalidFieldTypeError,
    InvalidGrammarError,
    InvalidJSONError,
    InvalidMessagesError,
    InvalidRangeError,
    InvalidRequestError,
    ModelDownloadError,
    ModelIntegrityError,
    ModelNotFoundError,
    ReloadAbortedError,
    ReloadModelIdNotUniqueError,
    RequestTooLargeError,
    ServerSentEventsError,
    SpecifiedModelNotFoundError,
    StorageQuotaError,
    TokenizerError,
    UnclearModelToUseError,
    UnknownChatTemplateError,
    UnknownMessageKindError,
    UnsupportedEndpointError,
    UnsupportedFieldError,
    UnsupportedModelError,
    UnsupportedSchemaError,
    UnsupportedTokenizerError,
    WebAssemblyBlockedError,
    WebGPUNotAvailableError,
    WebLLMError,
    WorkerBootError,
    WorkerError,
)
from .integrity import is_valid_sri, verify_integrity

if TYPE_CHECKING:
    from .worker.client import CreateWebWorkerMLCEngine, WebWorkerMLCEngine
    from .worker.service_worker_client import (
        CreateExtensionServiceWorkerMLCEngine,
        CreateServiceWorkerMLCEngine,
        ExtensionServiceWorkerMLCEngine,
        ServiceWorkerMLCEngine,
    )

# The worker proxies (worker/client.py, worker/service_worker_client.py) are imported on first use, keeping
# `import webllm_py` small.
_LAZY = {
    "CreateExtensionServiceWorkerMLCEngine": "webllm_py.worker.service_worker_client",
    "ExtensionServiceWorkerMLCEngine": "webllm_py.worker.service_worker_client",
    "CreateServiceWorkerMLCEngine": "webllm_py.worker.service_worker_client",
    "ServiceWorkerMLCEngine": "webllm_py.worker.service_worker_client",
    "CreateWebWorkerMLCEngine": "webllm_py.worker.client",
    "WebWorkerMLCEngine": "webllm_py.worker.client",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'webllm_py' has no attribute {name!r}")


__version__ = "0.1.0"  # keep equal to pyproject.toml's version (a unit test checks)

__all__ = [
    "AppConfig",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChatCompletionStream",
    "ChatCompletionStreamSync",
    "Choice",
    "ChoiceDelta",
    "ChatCompletionTokenLogprob",
    "ChoiceLogprobs",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionUsage",
    "ChatTemplateError",
    "ContextWindowSizeExceededError",
    "CorruptWeightsError",
    "CreateExtensionServiceWorkerMLCEngine",
    "CreateMLCEngine",
    "CreateServiceWorkerMLCEngine",
    "CreateWebWorkerMLCEngine",
    "DeviceLimitError",
    "DeviceLostError",
    "EngineBusyError",
    "EngineLostError",
    "EngineNotLoadedError",
    "ExtensionServiceWorkerMLCEngine",
    "FieldDependencyError",
    "GGUFError",
    "GGUFMetadataError",
    "GPUValidationError",
    "GrammarLimitError",
    "InitProgressReport",
    "IntegrityError",
    "InvalidAppConfigError",
    "InvalidFieldTypeError",
    "InvalidGrammarError",
    "InvalidJSONError",
    "InvalidMessagesError",
    "InvalidRangeError",
    "InvalidRequestError",
    "MLCEngine",
    "MLCEngineSync",
    "Messages",
    "ModelDownloadError",
    "ModelIntegrity",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ModelRecord",
    "ReloadAbortedError",
    "ReloadModelIdNotUniqueError",
    "RequestTooLargeError",
    "ServerSentEventsError",
    "ServiceWorkerMLCEngine",
    "SpecifiedModelNotFoundError",
    "StorageQuotaError",
    "TokenizerError",
    "TopLogprob",
    "UnclearModelToUseError",
    "UnknownChatTemplateError",
    "UnknownMessageKindError",
    "UnsupportedEndpointError",
    "UnsupportedFieldError",
    "UnsupportedModelError",
    "UnsupportedSchemaError",
    "UnsupportedTokenizerError",
    "WebAssemblyBlockedError",
    "WebGPUNotAvailableError",
    "WebLLMError",
    "WebWorkerMLCEngine",
    "WorkerBootError",
    "WorkerError",
    "__version__",
    "aparse_sse",
    "deleteChatConfigInCache",
    "deleteModelAllInfoInCache",
    "deleteModelInCache",
    "deleteModelWasmInCache",
    "functionCallingModelIds",
    "hasModelInCache",
    "is_valid_sri",
    "modelLibURLPrefix",
    "modelVersion",
    "parse_sse",
    "prebuilt_app_config",
    "sse_event",
    "to_sse",
    "verify_integrity",
]
