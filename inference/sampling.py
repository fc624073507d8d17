"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, per-request seeds, logprobs.

What it does: validates `SamplingParams` (a clear `RequestError` per bad field) and turns a step's logits into one
token per sampled sequence, with the sampled token's log-probability and the top-n alternatives. Log-probabilities
are those of the model's raw distribution (log_softmax of the logits, before temperature/top-k/top-p), as vLLM
reports them by default.
What it does not do: stop conditions or detokenization (sequence.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openlora.inference.errors import RequestError


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = -1                       # -1 or 0: off
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None           # None: no logprobs; n >= 0: the sampled token's plus the top n
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens <= 0:
            raise RequestError(f"max_tokens={self.max_tokens!r}: must be a positive integer")
        if not (self.temperature >= 0.0) or self.temperature != self.temperature:
            raise RequestError(f"temperature={self.temperature!r}: must be >= 0 (0 means greedy)")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise RequestError(f"top_k={self.top_k!r}: must be -1 (off) or a positive integer")
        if not (0.0 < self.top_p <= 1.0):
            raise RequestError(f"top_p={self.top_p!r}: must be in (0, 1]")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20):
            raise RequestError(f"logprobs={self.logprobs!r}: must be an integer from 0 to 20")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise RequestError(f"stop={self.stop!r}: stop strings must be non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class SampleResult:
    token_id: int
    logprob: float | None                   # of the sampled token
    top_logprobs: dict[int, float] | None   # top-n token -> logprob


class Sampler:
    def __call__(self, logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator | None]) -> list[SampleResult]:
        """logits [B, V] float32 -> one SampleResult per row."""
        B = logits.shape[0]
        if B == 0:
            return []
        need_lp = any(p.logprobs is not None for p in params)
        logprobs = torch.log_softmax(logits, dim=-1) if need_lp else None
        tokens = logits.argmax(dim=-1)
        for i, p in enumerate(params):
            if not p.greedy:
                tokens[i] = self._sample_row(logits[i], p, generators[i])
        out = []
        tok_list = tokens.tolist()
        for i, p in enumerate(params):
            lp = top = None
            if p.logprobs is not None and logprobs is not None:
                lp = float(logprobs[i, tok_list[i]])
                if p.logprobs > 0:
                    vals, idx = torch.topk(logprobs[i], p.logprobs)
                    top = dict(zip(idx.tolist(), vals.tolist()))
                else:
                    top = {}
            out.append(SampleResult(tok_list[i], lp, top))
        return out

    @staticmethod
    def _sample_row(row: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
        x = row / p.temperature
        if p.top_k > 0 and p.top_k < x.shape[-1]:
            kth = torch.topk(x, p.top_k).values[-1]
            x = torch.where(x < kth, torch.full_like(x, float("-inf")), x)
        if p.top_p < 1.0:
            sorted_x, order = torch.sort(x, descending=True)
            probs = torch.softmax(sorted_x, dim=-1)
            cum = probs.cumsum(-1)
            drop = cum - probs > p.top_p            # keep the smallest set whose mass reaches top_p
            sorted_x = torch.where(drop, torch.full_like(sorted_x, float("-inf")), sorted_x)
            x = torch.full_like(x, float("-inf")).scatter(0, order, sorted_x)
        probs = torch.softmax(x, dim=-1)
        return int(torch.multinomial(probs.cpu(), 1, generator=gen).item())
