"""The engine: load a GGUF onto the GPU, prefill a prompt, decode token ids. Host-agnostic; talks only to a Device.

The decode loop keeps the GPU busy: the sampler leaves each token where the next step's embedding reads it, so
step t + 1 is submitted before the host has read token t, and the host reads token ids one step behind from a small
ring of 4-byte MAP_READ buffers. Step t + 2 is encoded before the host waits for token t and submitted the moment
it arrives, so the host's encoding overlaps the GPU's work instead of following it. A step after the last wanted
token may run for nothing; it only writes a KV entry past the end, which the next request overwrites.

Sampling (temperature, top-p, top-k, penalties, logit bias) runs in the step's last dispatch (sample.wgsl); a
request only rewrites its Params. With logprobs the step also copies the sampler's small record (the chosen token's
log-probability and the top alternatives) next to the token id: a copy, not a dispatch.

The engine remembers which token ids its KV cache holds (``kv_ids``); a request whose prompt starts with them
prefills only the rest (multi-round chat, several choices of one prompt).
"""

from __future__ import annotations

import os
import random
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .conversation import AnyTemplate, get_chat_template
from .errors import (
    ContextWindowSizeExceededError,
    EngineBusyError,
    EngineNotLoadedError,
    GGUFMetadataError,
    InvalidRangeError,
)
from .gpu.device import BufferUsage, Device
from .kernels.params import pack_state
from .kernels.probe import probe_subgroups
from .kernels.registry import Kernels, Tier, default_tuning, is_cpu_adapter
from .kernels.tuning import tune_gemv
from .model.config import ModelConfig
from .model.gguf import ByteSource, GGUFFile
from .model.graph import Graph, check_kv_limit, default_chunk
from .model.loader import load_weights
from .protocol import check_token_ids
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .config import ModelRecord

Progress = Callable[[float, str], None]
DEFAULT_CONTEXT_WINDOW = 4096  # positions of KV cache when neither the request nor the model record says
READBACK_RING = 3  # MAP_READ buffers for token ids: one being read, one being written, one spare


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0.0 => greedy (argmax)
    top_p: float = 1.0
    top_k: int = 0  # 0 => off
    presence_penalty: float = 0.0  # [-2, 2], over tokens generated in this request
    frequency_penalty: float = 0.0  # [-2, 2]
    repetition_penalty: float = 1.0  # > 0; 1 => off
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100])
    logprobs: bool = False  # read the sampler's record back: the chosen token's log-probability...
    top_logprobs: int = 0  # ...and this many alternatives, [0, 20]
    seed: int | None = None  # None => a random seed
    max_tokens: int | None = None  # None => until the context window is full
    stop_token_ids: frozenset[int] = frozenset()  # extra ids that end generation
    ignore_eos: bool = False  # when True, neither EOS nor end-of-turn tokens stop generation


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_time_s: float = 0.0  # request start -> first token id on the host (prefill + first sample)
    decode_time_s: float = 0.0  # first token -> last token on the host
    token_times_s: list[float] = field(
        default_factory=list
    )  # host seconds before each token id (latency breakdown)
    time_to_first_token_s: float = 0.0
    e2e_latency_s: float = 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_time_s if self.prefill_time_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        n = self.completion_tokens - 1  # the first token comes out of the prefill step
        return n / self.decode_time_s if n > 0 and self.decode_time_s > 0 else 0.0

    @property
    def time_per_output_token_s(self) -> float:
        n = self.completion_tokens - 1
        return self.decode_time_s / n if n > 0 else 0.0


class Generation:
    """One request's token ids, as an async iterator. ``finish_reason`` and ``stats`` are final once it ends."""

    def __init__(self, engine: Engine, prompt_ids: list[int], params: SamplingParams, max_new: int):
        self.engine = engine
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_new = max_new
        self.finish_reason: str | None = None
        self.output_ids: list[int] = []  # the ids yielded so far
        self.reused = 0  # prompt tokens whose KV entries were already in the cache (not prefilled)
        # With params.logprobs, one (token, logprob, [(id, logprob)] * top_logprobs) per yielded token, appended
        # before the token is yielded.
        self.logprobs: list[tuple[int, float, list[tuple[int, float]]]] = []
        self.stats = GenerationStats(prompt_tokens=len(prompt_ids))
        self._started = False
        self._closed = False
        self._ids = self._run()

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> int:
        if self._closed:
            raise StopAsyncIteration
        return await self._ids.__anext__()

    async def aclose(self) -> None:
        """Stop early; the engine is free for the next request as soon as this returns."""
        if self.finish_reason is None:
            self.finish_reason = "abort"
        self._closed = True
        await self._ids.aclose()
        self.engine._release(self)

    def interrupt(self) -> None:
        """Ask the generation to end at its next token with finish_reason "abort" (safe from any task)."""
        self._interrupted = True

    _interrupted = False

    async def _run(self):  # noqa: C901 - the decode loop reads top to bottom on purpose
        engine, graph, dev = self.engine, self.engine.graph, self.engine.device
        params = self.params
        start = time.perf_counter()
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= engine.tokenizer.eot_ids
        read: list[int] = []  # generated ids, as the host read them
        submitted = 0  # steps submitted; step j consumes generated id j - 1 and writes its KV entry
        ids = self.prompt_ids
        reuse = self.reused
        try:
            # The seed picks the random stream; the kernel draws number `step` of it at step `step`, so the same
            # seed gives the same tokens on every host (up to float differences in the logits themselves).
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            graph.sampler.configure(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                seed=seed,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                repetition_penalty=params.repetition_penalty,
                logit_bias=params.logit_bias,
                logprobs=params.logprobs,
                top_logprobs=params.top_logprobs,
            )
            record = graph.sampler.record
            rec_bytes = graph.sampler.RECORD_BYTES

            def copies(step: int) -> list[tuple[Any, int, Any, int, int]]:
                # The token id (and, when asked, the sampler's record) of this step, into the readback rings.
                out = [(graph.tokens, 0, engine.ring[step % READBACK_RING], 0, 4)]
                if params.logprobs:
                    out.append((record, 0, engine.record_ring[step % READBACK_RING], 0, rec_bytes))
                return out

            # Prefill what the KV cache does not hold yet: chunks of at most graph.chunk tokens at positions
            # reuse.., the last one ending with the LM head and the sampler.
            # Until the prefill is submitted, nothing past the reused part is valid.
            engine.kv_ids = ids[:reuse]
            for c0 in range(reuse, len(ids), graph.chunk):
                chunk = ids[c0 : c0 + graph.chunk]
                last = c0 + len(chunk) == len(ids)
                dev.write_buffer(graph.tokens, 0, struct.pack(f"<{len(chunk)}I", *chunk))
                dev.write_buffer(graph.state, 0, pack_state(c0, len(chunk), 0))
                dev.submit(graph.forward(len(chunk), sample=last, pos=c0), copies(0) if last else [])
            engine.kv_ids = list(ids)
            submitted = 1  # the prefill's sample is step 0

            # Decode, reading one step behind: step i's token lands in ring[i % RING].
            if self.max_new > 1:
                dev.submit(graph.decode_dispatches, copies(1))
                submitted = 2
            first_token_at = last_at = 0.0
            encoded = None  # step `submitted`, encoded while the GPU runs the steps before it
            for i in range(self.max_new):
                if encoded is None and submitted < self.max_new:
                    encoded = dev.encode(graph.decode_dispatches, copies(submitted))
                data = await dev.read_buffer(engine.ring[i % READBACK_RING], 0, 4)
                token = struct.unpack("<I", data)[0]
                if params.logprobs:
                    rec = await dev.read_buffer(engine.record_ring[i % READBACK_RING], 0, rec_bytes)
                    _, logprob, top = graph.sampler.parse_record(rec, params.top_logprobs)
                    self.logprobs.append((token, logprob, top))
                read.append(token)
                self.output_ids.append(token)
                now = time.perf_counter()
                self.stats.token_times_s.append(now - (last_at or start))
                last_at = now
                if i == 0:
                    first_token_at = now
                    self.stats.time_to_first_token_s = now - start
                    self.stats.prefill_time_s = now - start
                self.stats.completion_tokens = i + 1
                self.stats.decode_time_s = now - first_token_at
                if encoded is not None and token not in stop_ids and not self._interrupted:
                    dev.submit_encoded(encoded)
                    encoded = None
                    submitted += 1
                yield token
                if token in stop_ids:
                    self.finish_reason = "stop"
                    return
                if self._interrupted:
                    self.finish_reason = "abort"
                    return
            self.finish_reason = "length"
        finally:
            # The cache holds the prompt and every generated id a submitted step consumed (never the last one).
            if engine.kv_ids == ids:
                engine.kv_ids = list(ids) + read[: max(0, submitted - 1)]
            self.stats.e2e_latency_s = time.perf_counter() - start
            engine._release(self)


class Engine:
    """A model loaded on one device, generating one request at a time."""

    def __init__(
        self,
        model_id: str,
        cfg: ModelConfig,
        gguf: GGUFFile,
        device: Device,
        kern: Kernels,
        graph: Graph,
        tokenizer: Tokenizer,
        chat_template: AnyTemplate,
    ):
        self.model_id = model_id
        self.config = cfg
        self.gguf = gguf
        self.device = device
        self.kern = kern
        self.graph = graph
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.context_window_size = graph.max_ctx
        self.ring = [
            device.create_buffer(4, BufferUsage.MAP_READ | BufferUsage.COPY_DST, f"token_readback{i}")
            for i in range(READBACK_RING)
        ]
        self.record_ring = [  # the sampler's logprobs record of a step, read only when a request asks for it
            device.create_buffer(
                graph.sampler.RECORD_BYTES, BufferUsage.MAP_READ | BufferUsage.COPY_DST, f"record_readback{i}"
            )
            for i in range(READBACK_RING)
        ]
        self.kv_ids: list[int] = []  # token ids whose KV entries positions 0.. of the cache hold, in order
        self._active: Generation | None = None
        self._unloaded = False
        self.owns_device = False  # set by load_engine when it opened the device itself
        self.load_stats: dict[str, Any] = {}

    @property
    def tier(self) -> Tier:
        return self.kern.tier

    @property
    def dispatches_per_decode_step(self) -> int:
        return len(self.graph.decode_dispatches)

    def generate(self, prompt_ids: list[int], params: SamplingParams, *, reuse_kv: bool = True) -> Generation:
        """Start generating after ``prompt_ids``; iterate the result for token ids.

        With ``reuse_kv`` the longest prefix of ``prompt_ids`` the KV cache already holds is not prefilled again
        (``Generation.reused`` says how many tokens; at least the last prompt token is always run)."""
        if self._unloaded:
            raise EngineNotLoadedError(f"model {self.model_id!r} was unloaded; reload it first")
        if self._active is not None:
            raise EngineBusyError(
                f"model {self.model_id!r} is already generating; finish or aclose() that generation first"
            )
        n_ctx = self.context_window_size
        if not prompt_ids:
            raise InvalidRangeError("prompt", prompt_ids, "at least one token")
        check_token_ids(prompt_ids, self.config.vocab_size, "prompt")
        room = n_ctx - len(prompt_ids)
        if room < 1:
            raise ContextWindowSizeExceededError(
                f"the prompt has {len(prompt_ids)} tokens but the context window holds {n_ctx} "
                f"(prompt plus reply); shorten the conversation or load the model with a larger context_window_size "
                f"(the model supports up to {self.config.context_length})"
            )
        if params.max_tokens is not None and params.max_tokens > room:
            raise ContextWindowSizeExceededError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the context window "
                f"of {n_ctx} tokens; lower max_tokens to at most {room} or shorten the prompt"
            )
        max_new = params.max_tokens if params.max_tokens is not None else room
        gen = Generation(self, list(prompt_ids), params, max_new)
        if reuse_kv:
            common = 0
            for a, b in zip(self.kv_ids, prompt_ids, strict=False):
                if a != b:
                    break
                common += 1
            gen.reused = min(common, len(prompt_ids) - 1)
        gen.stats.prompt_tokens = len(prompt_ids) - gen.reused
        self._active = gen
        return gen

    def _release(self, gen: Generation) -> None:
        if self._active is gen:
            self._active = None

    async def unload(self) -> None:
        if self._active is not None:
            await self._active.aclose()
        self._unloaded = True
        self.kv_ids = []
        for buf in self.ring + self.record_ring:
            self.device.destroy_buffer(buf)
        if self.owns_device:
            self.device.destroy()
        self.gguf.close()


def read_model(
    gguf: GGUFFile, chat_template: str | AnyTemplate | None = None
) -> tuple[ModelConfig, Tokenizer, AnyTemplate]:
    """Everything a model is made of that needs no GPU, read and checked from its GGUF header: the architecture,
    the tokenizer (which must have one token per row of the embedding) and the chat template. Every problem is a
    typed error naming the key (tests/fuzz runs corrupt files through this)."""
    cfg = ModelConfig.from_gguf(gguf)
    tokenizer = Tokenizer.from_gguf(gguf.metadata)
    if tokenizer.vocab_size != cfg.vocab_size:
        # the sampler picks among the LM head's rows: an id the tokenizer lacks would end the reply with an error
        raise GGUFMetadataError(
            gguf.name, "tokenizer.ggml.tokens", f"{cfg.vocab_size} tokens (the embedding's rows)",
            f"{tokenizer.vocab_size} tokens",
        )  # fmt: skip
    # Compiled once per model; importing jinja2 happens here, at the first load, not when the package loads.
    template = get_chat_template(
        gguf.get_str("tokenizer.chat_template", None), chat_template, tokenizer=tokenizer
    )
    return cfg, tokenizer, template


async def load_engine(
    record: ModelRecord | str,
    gguf_path: str | os.PathLike[str] | ByteSource,
    *,
    device: Device | None = None,
    progress: Progress | None = None,
    context_window_size: int | None = None,
    chat_template: str | AnyTemplate | None = None,
    tier: Tier | None = None,
    tuning: dict[str, object] | None = None,
    tune: bool | None = None,
    tuning_cache: str | None = None,
) -> Engine:
    """Open ``gguf_path`` (a local file, or a ByteSource such as the browser cache's) and put the model on
    ``device`` (the host's default WebGPU device when None).

    ``tier`` and ``tuning`` (Kernels keywords such as ``gemv_wg``) override what the adapter would get. ``tune``:
    measure the decode kernel shape of each matrix at load (default: on GPUs, not on CPU adapters, not when
    ``tuning`` is given); results are kept in ``tuning_cache`` (default ~/.cache/webllm_py/tuning.json on the
    desktop, nothing in the browser)."""
    t0 = time.perf_counter()
    model_id = record if isinstance(record, str) else record.model_id
    if not isinstance(record, str):
        context_window_size = context_window_size or record.context_window_size
        chat_template = chat_template if chat_template is not None else record.chat_template
    if isinstance(gguf_path, ByteSource):
        gguf = await GGUFFile.open_async(gguf_path)
    else:
        gguf = GGUFFile.open(gguf_path)
    try:
        cfg, tokenizer, template = read_model(gguf, chat_template)
        n_ctx = context_window_size or min(cfg.context_length, DEFAULT_CONTEXT_WINDOW)
        if not 1 <= n_ctx <= cfg.context_length:
            raise InvalidRangeError(
                "context_window_size", n_ctx, f"in [1, {cfg.context_length}] (the model's context length)"
            )
        owns_device = device is None
        if device is None:
            from .host import open_device

            device = await open_device()
        kern = Kernels(device, tier or Tier.for_device(device), **(tuning or default_tuning(device)))
        if kern.tier.subgroups:
            probe = await probe_subgroups(kern)
            if not probe.ok:  # reductions fall back to workgroup-memory trees
                kern = Kernels(
                    device, Tier(f16=kern.tier.f16, subgroups=False), **(tuning or default_tuning(device))
                )
            else:  # a GEMV_SEG segment must fit in the smallest subgroup
                kern.gemv_seg = min(kern.gemv_seg, probe.min_size)
        # GGUF -> features (cfg) -> GPU weights -> launches: each stage reads only what the one before made.
        check_kv_limit(cfg, kern, n_ctx)
        weights = await load_weights(gguf, cfg, kern, max_ctx=n_ctx, progress=progress)
        graph = Graph(cfg, kern, weights, max_ctx=n_ctx, chunk=default_chunk(n_ctx))
        if tune if tune is not None else (tuning is None and not is_cpu_adapter(device)):
            if tuning_cache is None and sys.platform != "emscripten":
                tuning_cache = os.path.join(os.path.expanduser("~"), ".cache", "webllm_py", "tuning.json")
            kern.gemv_roles, from_cache = await tune_gemv(graph, tuning_cache)
            graph.rebuild_decode()
            if progress is not None:
                shapes = ", ".join(f"{r} {c.label()}" for r, c in kern.gemv_roles.items())
                progress(1.0, f"Kernel shapes {'(cached)' if from_cache else 'measured'}: {shapes}")
        await device.idle()  # every shader compiled and every upload done: errors surface here, not mid-reply
    except BaseException:
        gguf.close()
        raise
    engine = Engine(model_id, cfg, gguf, device, kern, graph, tokenizer, template)
    engine.owns_device = owns_device
    engine.load_stats = {
        "load_time_s": time.perf_counter() - t0,
        "weight_bytes": graph.weight_bytes,
        "kv_cache_bytes": graph.kv_bytes,
        "tier": kern.tier.name,
        "pipelines": kern.n_pipelines,
        "adapter": device.info.summary(),
        "gemv": {role: c.label() for role, c in kern.gemv_roles.items()} or kern.gemv.label(),
    }
    return engine
