"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, per-request seeds, logprobs.

What it does: validates `SamplingParams` (a clear `RequestError` per bad field: wrong type, NaN/inf, out of range;
nothing is coerced) and turns a step's logits into one token per sampled sequence, with the sampled token's
log-probability and the top-n alternatives. Log-probabilities are those of the model's raw distribution
(log_softmax of the logits, before temperature/top-k/top-p), as vLLM reports them by default. A row whose logits
are not finite (NaN, +inf, or all -inf: e.g. a broken adapter) or whose sampling raises fails only its own request
(`SampleResult.error`); the other rows of the batch are sampled normally.
What it does not do: stop conditions or detokenization (sequence.py).

Limits (docs/api.md repeats them): temperature 0 (greedy) or in [MIN_TEMPERATURE, MAX_TEMPERATURE]; top_p in
(0, 1]; top_k -1/0 (off) or 1..MAX_TOP_K; seed an integer in [0, 2**63 - 1]; max_tokens 1..MAX_TOKENS; logprobs
0..MAX_LOGPROBS; at most MAX_STOP stop strings of 1..MAX_STOP_CHARS characters.
Why a temperature floor: the sampler computes (logits - max) / temperature in float32. Any finite temperature > 0
keeps that finite or -inf (never NaN), but a Python float below float32's range (1e-300) becomes 0 in float32 and
0 / 0 is NaN; temperatures that small are greedy in all but name, so they are refused with a pointer to 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from openlora.inference.errors import RequestError

log = logging.getLogger("openlora.engine")

MIN_TEMPERATURE = 1e-4
MAX_TEMPERATURE = 100.0
MAX_TOKENS = 1 << 20
MAX_TOP_K = 2**31 - 1
MAX_SEED = 2**63 - 1
MAX_LOGPROBS = 20
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
        if not isinstance(self.stop, (list, tuple)):
            raise RequestError(f"stop={_short(self.stop)}: must be a string or a list of at most {MAX_STOP} strings")
        object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.stop_token_ids, (list, tuple)):
            raise RequestError(f"stop_token_ids={_short(self.stop_token_ids)}: must be a list of token ids")
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if not _is_int(self.max_tokens) or not 1 <= self.max_tokens <= MAX_TOKENS:
            raise RequestError(f"max_tokens={_short(self.max_tokens)}: must be an integer from 1 to {MAX_TOKENS}")
        t = self.temperature
        if not _is_number(t) or t != t or t < 0:       # (an int too big for a float is caught by the range below)
            raise RequestError(f"temperature={_short(t)}: must be a finite number >= 0 (0 means greedy)")
        if t != 0 and not MIN_TEMPERATURE <= t <= MAX_TEMPERATURE:
            raise RequestError(f"temperature={_short(t)}: must be 0 (greedy) or from {MIN_TEMPERATURE} to "
                               f"{MAX_TEMPERATURE}; for (near-)deterministic output send temperature 0")
        object.__setattr__(self, "temperature", float(t))
        if not _is_int(self.top_k) or not -1 <= self.top_k <= MAX_TOP_K:
            raise RequestError(f"top_k={_short(self.top_k)}: must be -1 or 0 (off) or an integer from 1 to {MAX_TOP_K}")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:      # NaN fails the comparison too
            raise RequestError(f"top_p={_short(self.top_p)}: must be a number in (0, 1]")
        object.__setattr__(self, "top_p", float(self.top_p))
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise RequestError(f"seed={_short(self.seed)}: must be an integer from 0 to 2**63 - 1 ({MAX_SEED})")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise RequestError(f"logprobs={_short(self.logprobs)}: must be an integer from 0 to {MAX_LOGPROBS}")
        if (len(self.stop) > MAX_STOP
                or any(not isinstance(s, str) or not 1 <= len(s) <= MAX_STOP_CHARS for s in self.stop)):
            raise RequestError(f"stop={_short(self.stop)}: at most {MAX_STOP} non-empty strings of at most "
                               f"{MAX_STOP_CHARS} characters each")
        if (len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS
                or any(not _is_int(i) or i < 0 for i in self.stop_token_ids)):
            raise RequestError(f"stop_token_ids={_short(self.stop_token_ids)}: at most {MAX_STOP_TOKEN_IDS} "
                               f"non-negative integers")
        for name in ("ignore_eos", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise RequestError(f"{name}={_short(getattr(self, name))}: must be true or false")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


@dataclass
class SampleResult:
    token_id: int
    logprob: float | None                   # of the sampled token
    top_logprobs: dict[int, float] | None   # top-n token -> logprob
    error: str | None = None                # this row could not be sampled: its request fails, alone


class Sampler:
    def __call__(self, logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator | None]) -> list[SampleResult]:
        """logits [B, V] float32 -> one SampleResult per row (with `error` set for a row that cannot be sampled)."""
        B = logits.shape[0]
        if B == 0:
            return []
        need_lp = any(p.logprobs is not None for p in params)
        logprobs = torch.log_softmax(logits, dim=-1) if need_lp else None    # [B, V]
        # amax propagates NaN: a row is unusable when its max is NaN, +inf, or -inf (every token masked).
        # Greedy tokens and the row checks come to the host in one transfer (one sync per step, as before).
        finite = torch.isfinite(logits.amax(dim=-1))                          # [B]
        tok_list, ok = torch.stack((logits.argmax(dim=-1), finite.long())).tolist()
        out: list[SampleResult | None] = [None] * B
        for i, p in enumerate(params):
            if not ok[i]:
                out[i] = SampleResult(-1, None, None, "the model produced non-finite logits (NaN or inf) for this "
                                                      "request; its adapter may be broken")
            elif not p.greedy:
                try:
                    tok_list[i] = self._sample_row(logits[i], p, generators[i])
                except Exception as e:  # one row's failure fails its request only
                    log.exception("sampling failed for one request")
                    out[i] = SampleResult(-1, None, None, "sampling this request failed (internal error, in the "
                                                          "node's log)")
        for i, p in enumerate(params):
            if out[i] is not None:
                continue
            lp = top = None
            if p.logprobs is not None and logprobs is not None:
                lp = float(logprobs[i, tok_list[i]])
                k = min(p.logprobs, logprobs.shape[-1])
                if k > 0:
                    vals, idx = torch.topk(logprobs[i], k)
                    top = dict(zip(idx.tolist(), vals.tolist()))
                else:
                    top = {}
            out[i] = SampleResult(tok_list[i], lp, top)
        return out

    @staticmethod
    def _sample_row(row: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
        return int(torch.multinomial(Sampler.probs(row, p).cpu(), 1, generator=gen).item())

    @staticmethod
    def probs(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
        """row [V] with a finite max (the caller checks) -> [V] float32 probabilities after temperature, top-k and
        top-p. Subtracting the max first keeps every value in [-inf, 0] after the division, with 0 at the argmax:
        nothing overflows to +inf, so softmax never sees inf - inf and never returns NaN, for any finite logits and
        any allowed temperature."""
        x = row.float()
        x = (x - x.max()) / p.temperature
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
        return torch.softmax(x, dim=-1)
