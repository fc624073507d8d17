"""Continuous batching: which sequences compute how many tokens this step.

What it does: every step, running sequences continue first (decode tokens, or the next chunk of a prompt), then
waiting sequences join while the token budget, the sequence limit, free KV blocks and the LoRA pool allow. A long
prompt is split into chunks (chunked prefill) so that decoding sequences keep getting a token each step. When the
KV pool runs out, the newest running sequence is preempted (its blocks freed, recomputed later) instead of failing.
Admission reuses prefix-cached blocks keyed by the adapter's identity.
What it does not do: run the model or sample (the runner and sampler do; `postprocess` applies their result).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from openlora.inference.adapters import AdapterManager
from openlora.inference.kv_cache import BlockPool
from openlora.inference.sampling import SampleResult
from openlora.inference.sequence import Sequence, Status

log = logging.getLogger("openlora.engine")


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int          # tokens computed this step (from seq.num_computed)
    sample: bool                 # this step reaches the end of the sequence's tokens: sample the next one


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    num_batched_tokens: int = 0
    preempted: list[Sequence] = field(default_factory=list)
    failed: list[Sequence] = field(default_factory=list)     # their adapter failed to load: finished with error

    @property
    def empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, blocks: BlockPool, adapters: AdapterManager, *, max_num_seqs: int,
                 max_num_batched_tokens: int):
        self.blocks, self.adapters = blocks, adapters
        self.max_num_seqs, self.max_tokens = max_num_seqs, max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        # Virtual token counters per adapter (None = base model): tokens computed so far. Waiting sequences are
        # admitted lowest counter first, so a burst for one adapter cannot starve the others; a newly active
        # adapter starts at the lowest active counter (it gets no credit for having been idle).
        self.vtc: dict[str | None, float] = {}

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step ----
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_tokens
        # 1. running sequences first, oldest first; preempt the newest when blocks run out.
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_remaining, budget)
            while not self.blocks.allocate(seq.blocks, seq.num_computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                out.scheduled.append(ScheduledSeq(seq, n, seq.num_computed + n == len(seq.tokens)))
                budget -= n
                i += 1
                continue
            break  # seq itself was preempted: nothing more fits
        self.adapters.set_wanted({s.adapter for s in self.waiting if s.adapter is not None})
        # 2. waiting sequences join while budget, seats, blocks and LoRA slots allow; fairest adapter first.
        skipped: list[Sequence] = []
        candidates = self._admission_order() if self.waiting and not out.preempted else []
        if candidates:
            self.waiting.clear()          # re-filled below with whoever is not admitted, in admission order
        while candidates and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = candidates.pop(0)
            if seq.adapter is not None and seq.slot is None:
                status = self.adapters.status(seq.adapter)
                if status == "failed":
                    seq.finish("error", self.adapters.error(seq.adapter))
                    out.failed.append(seq)
                    continue
                if status != "ready":      # loading on a loader thread: wait in the queue, others go on
                    self.adapters.prefetch(seq.adapter)
                    if seq.load_wait_start is None:
                        seq.load_wait_start = time.monotonic()
                    skipped.append(seq)
                    continue
                slot = self.adapters.acquire(seq.adapter)
                if slot is None:           # LoRA pool full of adapters in use: let others with room go first
                    skipped.append(seq)
                    continue
                seq.slot = slot
                seq.adapter_identity = self.adapters.identity(seq.adapter)
                if seq.load_wait_start is not None:
                    self.adapters.load_wait.observe(time.monotonic() - seq.load_wait_start)
                    seq.load_wait_start = None
            if seq.num_computed == 0 and not seq.blocks.block_ids:
                seq.num_computed = self.blocks.match_prefix(seq.blocks, seq.tokens, seq.adapter_identity)
                seq.num_cached_tokens = seq.num_computed
            n = min(seq.num_remaining, budget)
            if not self.blocks.allocate(seq.blocks, seq.num_computed + n):
                self._reset(seq)
                skipped.append(seq)
                break
            seq.status = Status.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, n, seq.num_computed + n == len(seq.tokens)))
            budget -= n
        if candidates or skipped:
            self.waiting.extendleft(reversed(skipped + candidates))
        for s in out.scheduled:
            self.vtc[s.seq.adapter] = self.vtc.get(s.seq.adapter, 0.0) + s.num_new_tokens
        out.num_batched_tokens = self.max_tokens - budget
        return out

    def _admission_order(self) -> list[Sequence]:
        """Preempted sequences first (they already waited), then lowest virtual token counter, then arrival."""
        active = {s.adapter for s in self.running} | {s.adapter for s in self.waiting}
        known = [self.vtc[a] for a in active if a in self.vtc]
        floor = min(known) if known else 0.0
        for a in active:
            if a not in self.vtc or self.vtc[a] < floor:
                self.vtc[a] = floor
        order = {id(s): i for i, s in enumerate(self.waiting)}
        return sorted(self.waiting, key=lambda s: (s.num_preemptions == 0, self.vtc[s.adapter], order[id(s)]))

    def _reset(self, seq: Sequence) -> None:
        """Give back everything a not-running sequence holds (blocks, adapter slot); it recomputes later."""
        self.blocks.free(seq.blocks)
        seq.num_computed = 0
        if seq.slot is not None:
            self.adapters.release(seq.adapter)
            seq.slot = None

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._reset(seq)
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    # ---- after the model ran ----
    def postprocess(self, out: SchedulerOutput, samples: dict[str, SampleResult]) -> list[Sequence]:
        """Advance computed counts, append sampled tokens, retire finished sequences. Returns the updated ones.

        Per sequence: a sample with an `error`, or anything raised while applying it (detokenizing, stop strings),
        finishes that sequence with finish_reason "error" and frees its blocks; the others go on."""
        updated = []
        for s in out.scheduled:
            seq = s.seq
            if seq.finished:       # aborted while the step ran
                continue
            try:
                seq.num_computed += s.num_new_tokens
                self.blocks.register_full_blocks(seq.blocks, seq.tokens, seq.num_computed, seq.adapter_identity)
                if s.sample:
                    sample = samples[seq.request_id]
                    if sample.error is not None:
                        seq.finish("error", sample.error)
                    else:
                        seq.append(sample)
            except Exception as e:
                log.exception(f"request {seq.request_id} failed while its step was applied")
                seq.finish("error", f"internal error while generating this request (reference {seq.request_id} in "
                                    f"the node's log); the other requests are unaffected")
            if s.sample or seq.finished:
                updated.append(seq)
            if seq.finished:
                self._retire(seq)
        return updated

    def _retire(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        try:
            self.waiting.remove(seq)
        except ValueError:
            pass
        self._reset(seq)

    def abort(self, request_id: str) -> Sequence | None:
        for seq in [*self.running, *self.waiting]:
            if seq.request_id == request_id:
                seq.finish("abort")
                self._retire(seq)
                return seq
        return None
