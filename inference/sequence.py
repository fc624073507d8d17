"""A request's state inside the engine, its incremental detokenizer, and the `RequestOutput` it streams.

What it does: tracks tokens, how many are computed (in the KV cache), its block table, its adapter and slot,
stop conditions (EOS, stop token ids, stop strings, max_tokens, context length) and the text decoded so far.
What it does not do: decide scheduling or run the model.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from openlora.inference.kv_cache import SeqBlocks
from openlora.inference.sampling import SampleResult, SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class RequestOutput:
    """What a request has produced so far (the last one has finished=True)."""
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    adapter: str | None
    token_ids: list[int]                              # every generated token so far
    text: str                                         # their detokenized text (stop string removed)
    new_token_ids: list[int] = field(default_factory=list)
    new_text: str = ""
    logprobs: list[float] | None = None               # of each generated token, when requested
    top_logprobs: list[dict[int, float]] | None = None
    finished: bool = False
    finish_reason: str | None = None                  # stop | length | abort | error
    error: str | None = None
    num_cached_tokens: int = 0                        # prompt tokens served from the prefix cache
    arrival_time: float = 0.0
    first_token_time: float | None = None
    finish_time: float | None = None


class IncrementalDetokenizer:
    """Decodes output tokens as they arrive, never emitting half a UTF-8 character."""

    CONTEXT = 5  # prompt tokens kept as left context (tokenizers that merge a leading space depend on it)

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tok = tokenizer
        self.ids = list(prompt_ids[-self.CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def add(self, token_id: int) -> str:
        if self.tok is None:
            return ""
        self.ids.append(token_id)
        prefix = self.tok.decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        full = self.tok.decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix):]
        return ""

    def flush(self) -> str:
        """At the end: whatever is held back (an incomplete character becomes U+FFFD, as a full decode gives)."""
        if self.tok is None or self.read_offset >= len(self.ids):
            return ""
        prefix = self.tok.decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        full = self.tok.decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):]


class Sequence:
    def __init__(self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
                 adapter: str | None, adapter_identity: str | None, eos_ids: tuple[int, ...], tokenizer,
                 max_model_len: int):
        self.request_id = request_id
        self.prompt, self.prompt_ids = prompt, list(prompt_ids)
        self.params = params
        self.adapter, self.adapter_identity = adapter, adapter_identity
        self.slot: int | None = None                   # device LoRA slot while resident for this sequence
        self.output_ids: list[int] = []
        self.tokens: list[int] = list(prompt_ids)      # prompt + output
        self.num_computed = 0
        self.num_cached_tokens = 0
        self.blocks = SeqBlocks()
        self.status = Status.WAITING
        self.eos_ids = () if params.ignore_eos else eos_ids
        self.max_model_len = max_model_len
        self.generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.text = ""
        self._emitted_text = 0
        self._emitted_tokens = 0
        self.logprobs: list[float] | None = [] if params.logprobs is not None else None
        self.top_logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.arrival_time = time.monotonic()
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        self.num_preemptions = 0
        self.load_wait_start: float | None = None      # set while queued behind its adapter's load

    @property
    def num_remaining(self) -> int:
        """Tokens still to compute before the next sample."""
        return len(self.tokens) - self.num_computed

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED

    def append(self, s: SampleResult) -> None:
        if self.first_token_time is None:
            self.first_token_time = time.monotonic()
        self.output_ids.append(s.token_id)
        self.tokens.append(s.token_id)
        if self.logprobs is not None:
            self.logprobs.append(s.logprob)
            self.top_logprobs.append(s.top_logprobs or {})
        stop_token = s.token_id in self.eos_ids or s.token_id in self.params.stop_token_ids
        if not stop_token:
            self.text += self.detok.add(s.token_id)
        if self.params.stop and not stop_token and self._check_stop_strings():
            self.finish("stop")
            return
        if stop_token:
            self.finish("stop")
        elif len(self.output_ids) >= self.params.max_tokens or len(self.tokens) >= self.max_model_len:
            self.finish("length")
        else:
            return
        self.text += self.detok.flush()
        if self.params.stop and self._check_stop_strings():
            self.finish_reason = "stop"

    def _check_stop_strings(self) -> bool:
        longest = max(len(s) for s in self.params.stop)
        start = max(0, self._emitted_text - longest)
        for stop in self.params.stop:
            i = self.text.find(stop, start)
            if i >= 0:
                self.text = self.text[:i + len(stop)] if self.params.include_stop_str_in_output else self.text[:i]
                return True
        return False

    def finish(self, reason: str, error: str | None = None) -> None:
        self.status = Status.FINISHED
        self.finish_reason = reason
        self.error = error
        self.finish_time = time.monotonic()

    def output(self) -> RequestOutput:
        """The state now, with the part not yet reported as `new_*` (text held back while a stop string may form)."""
        hold = 0
        if self.params.stop and not self.finished:
            hold = max(len(s) for s in self.params.stop) - 1
        visible = max(self._emitted_text, len(self.text) - hold)
        new_text = self.text[self._emitted_text:visible]
        new_ids = self.output_ids[self._emitted_tokens:]
        self._emitted_text, self._emitted_tokens = visible, len(self.output_ids)
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt, prompt_token_ids=self.prompt_ids, adapter=self.adapter,
            token_ids=list(self.output_ids), text=self.text if self.finished else self.text[:visible],
            new_token_ids=new_ids, new_text=new_text,
            logprobs=list(self.logprobs) if self.logprobs is not None else None,
            top_logprobs=list(self.top_logprobs) if self.top_logprobs is not None else None,
            finished=self.finished, finish_reason=self.finish_reason, error=self.error,
            num_cached_tokens=self.num_cached_tokens, arrival_time=self.arrival_time,
            first_token_time=self.first_token_time, finish_time=self.finish_time)
