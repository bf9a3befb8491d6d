"""The engine: load a GGUF onto the GPU, prefill a prompt, decode token ids. Host-agnostic; talks only to a Device.

The decode loop keeps the GPU busy: the sampler leaves each token where the next step's embedding reads it, so
step t + 1 is submitted before the host has read token t, and the host reads token ids one step behind from a small
ring of 4-byte MAP_READ buffers. Step t + 2 is encoded before the host waits for token t and submitted the moment
it arrives, so the host's encoding overlaps the GPU's work instead of following it. A step after the last wanted
token may run for nothing; it only writes a KV entry past the end, which the next request overwrites.

Sampling (temperature, top-p, top-k, penalties, logit bias) runs in the step's last dispatch (sample.wgsl); a
request only rewrites its Params. With logprobs the step also copies the sampler's small record (the chosen token's
log-probability and the top alternatives) next to the token id: a copy, not a dispatch.

Constrained decoding (a grammar ``Matcher``: JSON mode, a schema, a grammar, tool calls) needs token t on the host
before step t + 1 can sample: its mask comes from the grammar state after t. The step is then split in two
submissions, forward (embedding, layers, LM head) and sample. The host submits sample(t) and at once forward(t + 1),
which consumes token t on the GPU; while that forward runs, the host reads token t, advances the matcher, writes the
mask of step t + 1 (``writeBuffer``, ceil(vocab / 32) words) and submits sample(t + 1) and forward(t + 2). The GPU
waits only when read-back + accept + mask + write take longer than one forward.

The engine remembers which token ids its KV cache holds (``kv_ids``); a request whose prompt starts with them
prefills only the rest (multi-round chat, several choices of one prompt).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import random
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .conversation import AnyTemplate, get_chat_template
from .errors import (
    ContextWindowSizeExceededError,
    EngineBusyError,
    EngineNotLoadedError,
    GGUFMetadataError,
    GrammarViolationError,
    InvalidRangeError,
)
from .gpu.device import BufferLedger, BufferUsage, Device, DeviceCaps
from .kernels.params import pack_state
from .kernels.probe import probe_subgroups
from .kernels.registry import Kernels, Tier, default_tuning, is_cpu_adapter
from .kernels.tuning import tune_gemv
from .model.config import ModelConfig
from .model.gguf import ByteSource, GGUFFile
from .model.graph import Graph, check_kv_limit, prefill_chunk
from .model.loader import load_weights
from .model.memory import MemoryPlan, check_fits, plan_memory
from .protocol import check_token_ids
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .config import ModelRecord
    from .grammar import Matcher, TokenIndex

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
    grammar_init_s: float | None = (
        None  # constrained: compile (unless cached) + matcher set-up; None: no grammar
    )
    grammar_s: float = 0.0  # constrained: host seconds in the matcher (masks and accepts)

    @property
    def grammar_per_token_s(self) -> float:
        return self.grammar_s / self.completion_tokens if self.completion_tokens else 0.0

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

    def __init__(
        self,
        engine: Engine,
        prompt_ids: list[int],
        params: SamplingParams,
        max_new: int,
        matcher: Matcher | None = None,
    ):
        self.engine = engine
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_new = max_new
        self.matcher = matcher  # constrains every sampled token; ends the reply when its grammar is complete
        self.finish_reason: str | None = None
        self.output_ids: list[int] = []  # the ids yielded so far
        self.reused = 0  # prompt tokens whose KV entries were already in the cache (not prefilled)
        # With params.logprobs, one (token, logprob, [(id, logprob)] * top_logprobs) per yielded token, appended
        # before the token is yielded.
        self.logprobs: list[tuple[int, float, list[tuple[int, float]]]] = []
        self.stats = GenerationStats(prompt_tokens=len(prompt_ids))
        if matcher is not None:
            self.stats.grammar_init_s = matcher.init_s
        self._read: list[int] = []  # generated ids, as the host read them
        self._submitted = 0  # steps submitted; step j consumes generated id j - 1 and writes its KV entry
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
    _start = _last_at = _first_at = 0.0

    async def _run(self):
        engine, graph, dev = self.engine, self.engine.graph, self.engine.device
        params, matcher = self.params, self.matcher
        start = self._start = time.perf_counter()
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= engine.tokenizer.eot_ids
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
            # The first token's mask is the grammar's start: known before the prefill.
            graph.sampler.set_mask(self._mask() if matcher is not None else None)

            # Prefill what the KV cache does not hold yet: chunks of at most graph.chunk tokens at positions
            # reuse.., the last one ending with the LM head and the sampler.
            # Until the prefill is submitted, nothing past the reused part is valid.
            engine.kv_ids = ids[:reuse]
            for c0 in range(reuse, len(ids), graph.chunk):
                chunk = ids[c0 : c0 + graph.chunk]
                last = c0 + len(chunk) == len(ids)
                dev.write_buffer(graph.tokens, 0, struct.pack(f"<{len(chunk)}I", *chunk))
                dev.write_buffer(graph.state, 0, pack_state(c0, len(chunk), 0))
                dev.submit(graph.forward(len(chunk), sample=last, pos=c0), self._copies(0) if last else [])
            engine.kv_ids = list(ids)
            self._submitted = 1  # the prefill's sample is step 0
            steps = self._free_steps(stop_ids) if matcher is None else self._guided_steps(stop_ids)
            async for token in steps:
                yield token
        finally:
            # The cache holds the prompt and every generated id a submitted step consumed (never the last one).
            if engine.kv_ids == ids:
                engine.kv_ids = list(ids) + self._read[: max(0, self._submitted - 1)]
            self.stats.e2e_latency_s = time.perf_counter() - start
            if matcher is not None:
                self.stats.grammar_s = matcher.grammar_s
            if matcher is not None or graph.sampler.masked:
                graph.sampler.set_mask(None)
            engine._release(self)

    def _copies(self, step: int) -> list[tuple[Any, int, Any, int, int]]:
        """The token id (and, when asked, the sampler's record) of this step, into the readback rings."""
        engine, graph = self.engine, self.engine.graph
        out = [(graph.tokens, 0, engine.ring[step % READBACK_RING], 0, 4)]
        if self.params.logprobs:
            rec = graph.sampler.RECORD_BYTES
            out.append((graph.sampler.record, 0, engine.record_ring[step % READBACK_RING], 0, rec))
        return out

    async def _read_token(self, i: int) -> int:
        """Read step i's token (and record), and account for it."""
        engine, dev = self.engine, self.engine.device
        data = await dev.read_buffer(engine.ring[i % READBACK_RING], 0, 4)
        token = struct.unpack("<I", data)[0]
        if self.params.logprobs:
            sampler = engine.graph.sampler
            rec = await dev.read_buffer(engine.record_ring[i % READBACK_RING], 0, sampler.RECORD_BYTES)
            _, logprob, top = sampler.parse_record(rec, self.params.top_logprobs)
            self.logprobs.append((token, logprob, top))
        self._read.append(token)
        self.output_ids.append(token)
        now = time.perf_counter()
        stats = self.stats
        stats.token_times_s.append(now - (self._last_at or self._start))
        self._last_at = now
        if i == 0:
            self._first_at = now
            stats.time_to_first_token_s = stats.prefill_time_s = now - self._start
        stats.completion_tokens = i + 1
        stats.decode_time_s = now - self._first_at
        return token

    async def _free_steps(self, stop_ids: set[int]):
        """Unconstrained decode, reading one step behind: step i's token lands in ring[i % RING]."""
        graph, dev = self.engine.graph, self.engine.device
        if self.max_new > 1:
            dev.submit(graph.decode_dispatches, self._copies(1))
            self._submitted = 2
        encoded = None  # step `submitted`, encoded while the GPU runs the steps before it
        for i in range(self.max_new):
            if encoded is None and self._submitted < self.max_new:
                encoded = dev.encode(graph.decode_dispatches, self._copies(self._submitted))
            token = await self._read_token(i)
            if encoded is not None and token not in stop_ids and not self._interrupted:
                dev.submit_encoded(encoded)
                encoded = None
                self._submitted += 1
            yield token
            if token in stop_ids:
                self.finish_reason = "stop"
                return
            if self._interrupted:
                self.finish_reason = "abort"
                return
        self.finish_reason = "length"

    async def _guided_steps(self, stop_ids: set[int]):
        """Constrained decode (see the module doc): sample(i) and forward(i + 1) are on the GPU while the host reads
        token i; its mask for step i + 1 follows as soon as the matcher has accepted it."""
        graph, dev, matcher = self.engine.graph, self.engine.device, self.matcher
        assert matcher is not None
        if self.max_new > 1:
            dev.submit(graph.decode_forward)  # step 1's forward: consumes token 0 once the prefill sampled it
        for i in range(self.max_new):
            token = await self._read_token(i)
            if not matcher.accept(token):
                raise GrammarViolationError(token, self._text_so_far())
            # A stop token ends the reply where the grammar accepts (the mask allowed it only there), and so does
            # a grammar with nothing left to add, whatever ignore_eos says: more tokens would break the format.
            ended = token in stop_ids or matcher.is_done()
            if not ended and not self._interrupted and i + 1 < self.max_new:
                graph.sampler.set_mask(self._mask())
                dev.submit(graph.decode_sample, self._copies(i + 1))
                self._submitted += 1
                if i + 2 < self.max_new:
                    dev.submit(graph.decode_forward)
            yield token
            if ended:
                self.finish_reason = "stop"
                return
            if self._interrupted:
                self.finish_reason = "abort"
                return
        self.finish_reason = "length"

    def _mask(self) -> bytes | None:
        """The matcher's mask for the next token, or None when it allows every token (a lazy matcher before its
        trigger): then the sampler runs unmasked."""
        matcher = self.matcher
        assert matcher is not None
        if not matcher.armed:
            return None
        return matcher.mask()

    def _text_so_far(self) -> str:
        return self.engine.tokenizer.decode(self.output_ids[:-1])


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
        self._token_index: TokenIndex | None = None
        self._active: Generation | None = None
        self._unloaded = False
        self.owns_device = False  # set by load_engine when it opened the device itself
        # (first, end) marks of the buffers its load made on a shared device (BufferLedger), freed by unload
        self.buffer_range: tuple[int, int] | None = None
        self.load_stats: dict[str, Any] = {}

    @property
    def tier(self) -> Tier:
        return self.kern.tier

    @property
    def dispatches_per_decode_step(self) -> int:
        return len(self.graph.decode_dispatches)

    @property
    def token_index(self) -> TokenIndex:
        """The vocabulary as grammar matchers need it (made on first use, its tries on the first mask): one per
        tokenizer, shared by every constrained request on this model."""
        if self._token_index is None:
            from .grammar import TokenIndex

            self._token_index = TokenIndex.from_tokenizer(self.tokenizer, n_vocab=self.config.vocab_size)
        return self._token_index

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        reuse_kv: bool = True,
        matcher: Matcher | None = None,
    ) -> Generation:
        """Start generating after ``prompt_ids``; iterate the result for token ids.

        With ``reuse_kv`` the longest prefix of ``prompt_ids`` the KV cache already holds is not prefilled again
        (``Generation.reused`` says how many tokens; at least the last prompt token is always run). With
        ``matcher`` (over ``token_index``) every token is sampled under its grammar's mask, and the reply ends when
        the grammar is complete."""
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
        if matcher is not None and matcher.index is not self.token_index:
            raise ValueError("the matcher must be built over this engine's token_index")
        gen = Generation(self, list(prompt_ids), params, max_new, matcher)
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
        elif self.buffer_range is not None:  # a shared device: free every buffer this model's load made
            release_buffers(self.device, *self.buffer_range)
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


def context_window(cfg: ModelConfig, requested: int | None) -> int:
    """The KV cache's positions: the requested context_window_size, else the model's context length up to
    DEFAULT_CONTEXT_WINDOW; InvalidRangeError beyond the model's."""
    n_ctx = requested or min(cfg.context_length, DEFAULT_CONTEXT_WINDOW)
    if not 1 <= n_ctx <= cfg.context_length:
        raise InvalidRangeError(
            "context_window_size", n_ctx, f"in [1, {cfg.context_length}] (the model's context length)"
        )
    return n_ctx


def plan_model(
    gguf: GGUFFile,
    caps: DeviceCaps,
    *,
    model_id: str,
    context_window_size: int | None,
    f16: bool | None = None,
    prefill_chunk_size: int | None = None,
) -> MemoryPlan:
    """The GPU memory ``gguf`` needs (its header suffices) at the context window load_engine would give it, on an
    adapter with ``caps``; ``f16``: the tier's KV cache type (default: the adapter's shader-f16)."""
    cfg = ModelConfig.from_gguf(gguf)
    n_ctx = context_window(cfg, context_window_size)
    return plan_memory(
        gguf,
        cfg,
        context=n_ctx,
        f16=caps.has_f16 if f16 is None else f16,
        caps=caps,
        model=model_id,
        prefill_chunk_size=prefill_chunk_size,
    )


async def preflight(
    records: list[ModelRecord],
    read_header: Callable[[ModelRecord], Awaitable[GGUFFile | None]],
    *,
    device: Device | None = None,
    reclaimable: int = 0,
) -> tuple[bool, bool]:
    """Check, from their GGUF headers, that the models of ``records`` fit the GPU together (model/memory.py):
    ModelTooLargeError (or the header's GGUFError) when not. ``read_header`` gives a record's header (None: not
    known yet, such as a GGUF inside an archive before its download); ``device``: the device they will load on (None:
    each opens its own on the host's adapter); ``reclaimable``: GPU bytes that models about to be unloaded free.
    MLCEngine.reload calls this before downloading and before unloading anything. Returns whether every header was
    known (else check again once the files are there) and whether the models also fit beside those about to be
    unloaded (the host knows its free memory and it holds all of them: then they may load first)."""
    # The adapter first: without one (no WebGPU) the reload fails before a byte of any model is fetched.
    caps = await _fit_caps(device)
    headers: list[GGUFFile | None] = []
    try:
        for record in records:
            headers.append(await read_header(record))
        known = [(r, h) for r, h in zip(records, headers, strict=True) if h is not None]
        if known:
            plans = [
                plan_model(
                    h,
                    caps,
                    model_id=r.model_id,
                    context_window_size=r.context_window_size,
                    prefill_chunk_size=r.prefill_chunk_size,
                )  # fmt: skip
                for r, h in known
            ]
            adapter = device.info.summary() if device is not None else ""
            check_fits(plans, caps, adapter=adapter, reclaimable=reclaimable)
            beside = caps.memory_bytes is not None and sum(p.peak_bytes for p in plans) <= caps.memory_bytes
        else:
            beside = False
    finally:
        for h in headers:
            if h is not None:
                h.close()
        n_known = sum(h is not None for h in headers)
        headers.clear()
        # A header's parse leaves a vocabulary's worth of objects (49k-152k strings), some in reference cycles:
        # collect them now, before the load parses the header again, so the two do not add up (the browser's wasm
        # heap never shrinks back).
        gc.collect()
    return n_known == len(records), beside


def release_buffers(device: Device, start: int, end: int | None = None) -> int:
    """Destroy the live buffers ``device`` (a BufferLedger) made between two marks; returns the bytes freed."""
    bufs = device.buffers_since(start, end)  # type: ignore[attr-defined]
    for buf in bufs:
        device.destroy_buffer(buf)
    return sum(b.size for b in bufs)


async def open_gguf(source: str | os.PathLike[str] | ByteSource | GGUFFile) -> GGUFFile:
    """A GGUF from what a model resolver returns: a local path, a ByteSource (browser storage), or an open file."""
    if isinstance(source, GGUFFile):
        return source
    if isinstance(source, ByteSource):
        return await GGUFFile.open_async(source)
    return GGUFFile.open(source)


async def _fit_caps(device: Device | None) -> DeviceCaps:
    """What a model must fit: a fresh look at the host's adapter, or the caller's device with the memory it had
    when it opened less what we allocated on it since."""
    if device is None:
        from .host import adapter_caps

        return await adapter_caps()
    caps = device.caps
    if caps.memory_bytes is not None:
        used = getattr(device, "allocated_bytes", 0)
        caps = dataclasses.replace(caps, memory_bytes=max(0, caps.memory_bytes - used))
    return caps


async def load_engine(
    record: ModelRecord | str,
    gguf_path: str | os.PathLike[str] | ByteSource | GGUFFile,
    *,
    device: Device | None = None,
    progress: Progress | None = None,
    context_window_size: int | None = None,
    chat_template: str | AnyTemplate | None = None,
    tier: Tier | None = None,
    tuning: dict[str, object] | None = None,
    tune: bool | None = None,
    tuning_cache: str | None = None,
    prefill_chunk_size: int | None = None,
) -> Engine:
    """Open ``gguf_path`` (a local file, a ByteSource such as the browser cache's, or a GGUFFile already open) and
    put the model on ``device`` (when None: a device of the host's adapter, requested with the buffer limits the
    model needs, model/memory.py). A model that does not fit fails with ModelTooLargeError before any upload.

    ``tier`` and ``tuning`` (Kernels keywords such as ``gemv_wg``) override what the adapter would get. ``tune``:
    measure the decode kernel shape of each matrix at load (default: on GPUs, not on CPU adapters, not when
    ``tuning`` is given); results are kept in ``tuning_cache`` (default ~/.cache/webllm_py/tuning.json on the
    desktop, nothing in the browser). ``prefill_chunk_size``: tokens of one prefill step (WebLLM's ChatOptions key;
    default graph.default_chunk, at most the context window); larger steps give the prefill GEMMs more workgroups
    and take more activation memory."""
    t0 = time.perf_counter()
    model_id = record if isinstance(record, str) else record.model_id
    if not isinstance(record, str):
        context_window_size = context_window_size or record.context_window_size
        prefill_chunk_size = prefill_chunk_size or record.prefill_chunk_size
        chat_template = chat_template if chat_template is not None else record.chat_template
    gguf = await open_gguf(gguf_path)
    mark = device.buffer_mark() if isinstance(device, BufferLedger) else None
    owns_device = device is None
    try:
        cfg, tokenizer, template = read_model(gguf, chat_template)
        n_ctx = context_window(cfg, context_window_size)
        caps = await _fit_caps(device)
        f16 = tier.f16 and caps.has_f16 if tier is not None else caps.has_f16
        chunk = prefill_chunk(n_ctx, prefill_chunk_size)
        plan = plan_memory(
            gguf, cfg, context=n_ctx, f16=f16, caps=caps, model=model_id, prefill_chunk_size=chunk
        )
        check_fits([plan], caps, adapter=device.info.summary() if device is not None else "")
        if device is None:
            from .host import open_device

            device = await open_device(limits=plan.device_limits(caps))
        kern = Kernels(device, tier or Tier.for_device(device), **(tuning or default_tuning(device)))
        if kern.tier.subgroups:
            probe = await probe_subgroups(kern)
            if not probe.ok:  # reductions fall back to workgroup-memory trees
                kern = Kernels(
                    device, Tier(f16=kern.tier.f16, subgroups=False), **(tuning or default_tuning(device))
                )
            else:  # a GEMV_SEG segment must fit in the smallest subgroup
                kern.gemv_seg = min(kern.gemv_seg, probe.min_size)
                kern.subgroup_min = probe.min_size
        # GGUF -> features (cfg) -> GPU weights -> launches: each stage reads only what the one before made.
        check_kv_limit(cfg, kern, n_ctx)
        weights = await load_weights(gguf, cfg, kern, max_ctx=n_ctx, progress=progress)
        graph = Graph(cfg, kern, weights, max_ctx=n_ctx, chunk=chunk)
        if tune if tune is not None else (tuning is None and not is_cpu_adapter(device)):
            if tuning_cache is None and sys.platform != "emscripten":
                tuning_cache = os.path.join(os.path.expanduser("~"), ".cache", "webllm_py", "tuning.json")
            kern.gemv_roles, from_cache, tuning_us = await tune_gemv(graph, tuning_cache)
            graph.rebuild_decode()
            if progress is not None:
                shapes = ", ".join(f"{r} {c.label()}" for r, c in kern.gemv_roles.items())
                progress(1.0, f"Kernel shapes {'(cached)' if from_cache else 'measured'}: {shapes}")
        await device.idle()  # every shader compiled and every upload done: errors surface here, not mid-reply
    except BaseException:
        gguf.close()
        # Nothing of a failed load stays on the GPU: its own device goes, or on a shared one the buffers it made
        # (the models already loaded there keep theirs and keep working).
        if owns_device and device is not None:
            device.destroy()
        elif mark is not None:
            release_buffers(device, mark)
        raise
    engine = Engine(model_id, cfg, gguf, device, kern, graph, tokenizer, template)
    engine.owns_device = owns_device
    engine.buffer_range = (mark, device.buffer_mark()) if mark is not None else None
    engine.load_stats = {
        "load_time_s": time.perf_counter() - t0,
        "weight_bytes": graph.weight_bytes,  # GPU memory, as allocated
        "kv_cache_bytes": graph.kv_bytes,
        "activation_bytes": graph.activation_bytes,
        # the device's live and peak buffer bytes (a shared device's: every model on it); peak: during the load
        "device_bytes": getattr(device, "allocated_bytes", None),
        "device_peak_bytes": getattr(device, "peak_allocated_bytes", None),
        "context_window_size": n_ctx,
        **plan.as_stats(),
        "tier": kern.tier.name,
        "pipelines": kern.n_pipelines,
        "adapter": device.info.summary(),
        "gemv": {role: c.label() for role, c in kern.gemv_roles.items()} or kern.gemv.label(),
    }
    if kern.gemv_roles:
        engine.load_stats["gemv_tuning"] = {"from_cache": from_cache, "us_per_launch": tuning_us}
    return engine
