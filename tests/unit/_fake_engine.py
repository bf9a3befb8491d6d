"""A fake GPU engine, tokenizer and chat template for the API tests: same interface as webllm_py.engine's
``Engine`` / ``Generation`` / ``GenerationStats`` and the tokenizer's stream decoder, no GPU, no model.

The fake model "says" a script: a list of token pieces (str or raw bytes). The tokenizer gives each distinct piece
an id; its stream decoder holds incomplete UTF-8 between tokens, as the real one does, so a script can split a
multi-byte character across tokens.
"""

from __future__ import annotations

import asyncio
import codecs

from webllm_py.engine import GenerationStats, SamplingParams
from webllm_py.errors import ContextWindowSizeExceededError

EOT_PIECE = b"<|im_end|>"


class FakeStreamDecoder:
    def __init__(self, tokenizer: FakeTokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer.pieces[token_id])

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class FakeTokenizer:
    def __init__(self) -> None:
        self.pieces: list[bytes] = [b"<s>", EOT_PIECE]
        self.bos_id = 0
        self.eos_id = 1
        self.eot_ids = frozenset({1})
        self.encoded: list[str] = []  # every text passed to encode(), for assertions

    def ids(self, pieces: list[str | bytes]) -> list[int]:
        out = []
        for piece in pieces:
            raw = piece.encode() if isinstance(piece, str) else piece
            if raw not in self.pieces:
                self.pieces.append(raw)
            out.append(self.pieces.index(raw))
        return out

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        self.encoded.append(text)
        bos = [self.bos_id] if add_bos is not False else []
        return bos + self.ids(list(text))  # one token per character: prompt length = len(text) + 1

    def encode_parts(self, parts: list[tuple[str, bool]], add_bos: bool | None = None) -> list[int]:
        return self.encode("".join(t for t, _ in parts), add_bos=add_bos)

    vocab_size = 1000  # ids the fake model could say (pieces get ids as they are first seen)

    def token_bytes(self, token_id: int) -> bytes:
        return self.pieces[token_id]

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", "replace")

    def stream_decoder(self) -> FakeStreamDecoder:
        return FakeStreamDecoder(self)


class FakeChatTemplate:
    stop_strings = ("<|im_end|>",)

    def __init__(self) -> None:
        self.rendered: list[list[dict]] = []

    def render(
        self, messages: list[dict], *, add_generation_prompt: bool = True, template_kwargs: dict | None = None
    ) -> str:
        self.rendered.append(messages)
        self.template_kwargs = template_kwargs

        def content(m: dict) -> str:
            c = m["content"]
            return c if isinstance(c, str) else "\n".join(p["text"] for p in c)

        text = "".join(f"{m['role']}: {content(m)}\n" for m in messages)
        return text + ("assistant: " if add_generation_prompt else "")

    def render_parts(
        self, messages: list[dict], *, add_generation_prompt: bool = True, template_kwargs: dict | None = None
    ) -> list[tuple[str, bool]]:
        text = self.render(
            messages, add_generation_prompt=add_generation_prompt, template_kwargs=template_kwargs
        )
        return [(text, True)]


class FakeGeneration:
    """Like engine.Generation: yields the script's ids; an end id (eot, or a request stop id) is yielded, then the
    generation ends with "stop"; max_tokens ends it with "length"; interrupt() ends it after the next id."""

    def __init__(
        self, engine: FakeEngine, prompt_ids: list[int], script: list[int], params, step_delay: float
    ):
        self._engine = engine
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self._script = list(script)
        self._params = params
        self._step_delay = step_delay
        self._interrupted = False
        self.finish_reason: str | None = None
        # prefill 0.5 s, then 10 ms per token: fixed numbers the usage tests can check
        self.stats = GenerationStats(
            prompt_tokens=len(prompt_ids), prefill_time_s=0.5, time_to_first_token_s=0.5
        )
        self.aclose_calls = 0
        self.yielded: list[int] = []
        self.output_ids = self.yielded
        self.reused = 0
        # With params.logprobs: each token's record; the fake distribution gives every token log-probability
        # -0.25 * (its position + 1) and names ids 2, 3... as the alternatives.
        self.logprobs: list[tuple[int, float, list[tuple[int, float]]]] = []

    def __aiter__(self) -> FakeGeneration:
        return self

    async def __anext__(self) -> int:
        if self.finish_reason is not None:
            raise StopAsyncIteration
        await asyncio.sleep(self._step_delay)  # a decode step awaits the GPU: other tasks run meanwhile
        last = self.yielded[-1] if self.yielded else None
        stop_ids = self._params.stop_token_ids | (
            frozenset() if self._params.ignore_eos else self._engine.tokenizer.eot_ids
        )
        if last is not None and last in stop_ids:
            self._end("stop")
        if self._interrupted:
            self._end("abort")
        if self._params.max_tokens is not None and len(self.yielded) >= self._params.max_tokens:
            self._end("length")
        if len(self.yielded) >= len(self._script):
            self._end("length")  # script over without an end id: as if the context window were full
        token_id = self._script[len(self.yielded)]
        if self._params.logprobs:
            lp = -0.25 * (len(self.yielded) + 1)
            top = [(2 + j, lp - j) for j in range(self._params.top_logprobs)]
            self.logprobs.append((token_id, lp, top))
        self.yielded.append(token_id)
        self._engine.kv_ids.append(token_id)
        self.stats.completion_tokens += 1
        self.stats.decode_time_s = 0.01 * (self.stats.completion_tokens - 1)
        self.stats.e2e_latency_s = self.stats.prefill_time_s + self.stats.decode_time_s
        return token_id

    def _end(self, reason: str) -> None:
        self.finish_reason = reason
        self._engine.busy = False
        raise StopAsyncIteration

    def interrupt(self) -> None:
        self._interrupted = True

    async def aclose(self) -> None:
        # Idempotent, like the real one: streaming.py and ChatCompletionStream may both close it.
        self.aclose_calls += 1
        if self.finish_reason is None:
            self.finish_reason = "abort"
        self._engine.busy = False


class FakeEngine:
    def __init__(
        self, model_id: str = "fake-model", context_window_size: int = 4096, step_delay: float = 0.0
    ):
        self.model_id = model_id
        self.tokenizer = FakeTokenizer()
        self.chat_template = FakeChatTemplate()
        self.context_window_size = context_window_size
        self.step_delay = step_delay
        self.script: list[int] = []  # what the next generation says, as token ids
        self.generations: list[FakeGeneration] = []
        self.busy = False
        self.unloaded = False
        self.kv_ids: list[int] = []  # what the fake KV cache holds (prompt, then every generated id)

    def say(self, pieces: list[str | bytes], end: bool = True) -> list[int]:
        """Set the next reply: token pieces, then end-of-turn unless ``end`` is False."""
        self.script = self.tokenizer.ids(pieces) + ([self.tokenizer.eos_id] if end else [])
        return self.script

    def generate(self, prompt_ids: list[int], params, *, reuse_kv: bool = True) -> FakeGeneration:
        if self.busy:
            # The real engine has one KV cache: two generations at once would corrupt it.
            raise RuntimeError("FakeEngine.generate called while another generation is running")
        budget = params.max_tokens or 1
        if len(prompt_ids) + budget > self.context_window_size:
            raise ContextWindowSizeExceededError(
                f"prompt {len(prompt_ids)} + max_tokens {budget} > context window {self.context_window_size}"
            )
        self.busy = True
        generation = FakeGeneration(self, prompt_ids, self.script, params, self.step_delay)
        common = 0
        if reuse_kv:  # the longest prefix the cache holds, as the real engine
            for a, b in zip(self.kv_ids, prompt_ids, strict=False):
                if a != b:
                    break
                common += 1
        generation.reused = min(common, len(prompt_ids) - 1)
        generation.stats.prompt_tokens = len(prompt_ids) - generation.reused
        self.kv_ids = list(prompt_ids)
        self.params = params
        self.generations.append(generation)
        return generation

    async def unload(self) -> None:
        self.unloaded = True


def make_params(**kw) -> SamplingParams:
    return SamplingParams(**kw)
