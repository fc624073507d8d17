"""The engine: `EngineConfig` and `LLMEngine`, whose `step()` is schedule -> run -> sample -> postprocess.

What it does: builds the model runner, KV block pool, LoRA pool, adapter manager and scheduler from one frozen
config; validates each request when it is added (a bad request fails alone, with a clear error); steps the batch.
A failure that belongs to one request (its sampling, its postprocessing, or a forward that fails only with it in
the batch: see `_run`) fails that request alone; only an engine-wide failure propagates out of `step()`.
What it does not do: threads or asyncio (client.py wraps it), HTTP, or money.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from openlora.inference.adapter_store import DiskStore
from openlora.inference.adapters import AdapterManager
from openlora.inference.errors import AdapterError, InferenceError, RequestError
from openlora.inference.kv_cache import BlockPool
from openlora.inference.lora import LoRAPool
from openlora.inference.model import LlamaServingModel
from openlora.inference.model_config import load_weights, read_model_spec
from openlora.inference.runner import ModelRunner, RunnerOutput, kv_bytes_per_block
from openlora.inference.sampling import Sampler, SamplingParams
from openlora.inference.scheduler import ScheduledSeq, Scheduler, SchedulerOutput
from openlora.inference.sequence import RequestOutput, Sequence
from openlora.inference.sizing import AUTO_LORA_RANK, plan_memory
from openlora.inference.sources import AdapterSource, LocalDirSource

log = logging.getLogger("openlora.engine")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class StepInfo:
    """What the last model step ran (benchmarks and metrics read it)."""
    decode: bool          # every scheduled sequence had exactly one new token
    num_seqs: int
    num_tokens: int


@dataclass(frozen=True)
class EngineConfig:
    model: str
    dtype: str = "float32"
    device: str = "auto"
    max_model_len: int | None = None          # default: the model's max_position_embeddings
    block_size: int = 16
    # "auto": sized at start from free memory and the model's shapes (inference/sizing.py, logged), or bytes.
    kv_cache_bytes: int | str = "auto"
    num_kv_blocks: int | None = None          # overrides kv_cache_bytes (tests force tiny pools with it)
    max_num_seqs: int = 128                   # as vLLM CPU's API server; 96+ sequences amortize the weights
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    kernel_backend: str = "auto"              # auto | torch | triton | native
    lora_pool_bytes: int | str = "auto"       # device pool shared by adapters of every rank (bytes or "auto")
    host_cache_bytes: int | str = "auto"      # validated adapters kept in host memory (bytes or "auto")
    disk_store_dir: str | None = None         # None: adapters are read in place from their source
    disk_store_bytes: int = 50 * 2**30
    adapter_loader_threads: int = 2
    max_loras: int = 64                       # resident adapter slots
    max_lora_rank: int = 256
    max_adapter_bytes: int | None = None
    tokenizer: str | None = None              # default: the model directory
    decode_bgmv_min_segments: int | None = None   # None: the kernel backend's choice (tests force BGMV with 1)
    # All-decode steps as CUDA graphs: "auto" = on for a CUDA device with the Triton backend, "on" (error where
    # impossible), "off", or "static" (the padded static-buffer path without capturing, any device: for tests).
    decode_graphs: str = "auto"
    # One LoRA shrink + expand launch per fused linear (q/k/v together); False: one pair per target, the same
    # function with more launches (kept for side-by-side benchmarks).
    lora_sliced_launch: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: allowed are {', '.join(_DTYPES)}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size={self.block_size}: must be a power of two")
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_loras", "max_lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        for name in ("kv_cache_bytes", "lora_pool_bytes", "host_cache_bytes"):
            v = getattr(self, name)
            if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}={v!r}: must be 'auto' or a number of bytes >= 1")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks={self.num_kv_blocks}: must be >= 1")
        if self.decode_graphs not in ("auto", "on", "off", "static"):
            raise ValueError(f"decode_graphs={self.decode_graphs!r}: allowed are auto, on, off, static")
        if self.kernel_backend not in ("auto", "torch", "triton", "native"):
            raise ValueError(f"kernel_backend={self.kernel_backend!r}: allowed are auto, torch, triton, native")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class LLMEngine:
    def __init__(self, config: EngineConfig, source: AdapterSource | None = None):
        from openlora.kernels.ops import get_backend

        self.config = config
        path = Path(config.model)
        self.spec = read_model_spec(path)
        self.device = _device(config.device)
        self.dtype = _DTYPES[config.dtype]
        self.max_model_len = config.max_model_len or self.spec.max_position_embeddings
        if self.spec.sliding_window and self.max_model_len > self.spec.sliding_window:
            log.warning(f"capping max_model_len at the model's sliding window ({self.spec.sliding_window})")
            self.max_model_len = self.spec.sliding_window
        self.backend = get_backend(config.kernel_backend, self.device)
        if config.decode_bgmv_min_segments is not None:
            self.backend = dataclasses.replace(self.backend, decode_bgmv_min_segments=config.decode_bgmv_min_segments)
        log.info(f"kernel backend: {self.backend.name} ({self.backend.description})")
        weights = load_weights(path, self.spec, self.dtype, self.device)
        self.model = LlamaServingModel(self.spec, weights, self.dtype, self.device, self.backend,
                                       lora_sliced=config.lora_sliced_launch)
        log.info(f"linears: {self.model.linear_kernels}")
        self.memory = plan_memory(self.spec, self.dtype, self.device, kv_cache_bytes=config.kv_cache_bytes,
                                  lora_pool_bytes=config.lora_pool_bytes, host_cache_bytes=config.host_cache_bytes,
                                  max_num_seqs=config.max_num_seqs, max_model_len=self.max_model_len,
                                  max_loras=config.max_loras, max_num_batched_tokens=config.max_num_batched_tokens,
                                  max_lora_rank=config.max_lora_rank)
        num_blocks = config.num_kv_blocks or max(
            1, self.memory.kv_cache_bytes // kv_bytes_per_block(self.spec, config.block_size, self.dtype))
        self.blocks = BlockPool(num_blocks, config.block_size, config.enable_prefix_caching)
        rows = max(1, self.memory.lora_pool_bytes // LoRAPool.bytes_per_row(self.spec, self.dtype))
        log.info(self.memory.describe(num_blocks * config.block_size, rows, rows // AUTO_LORA_RANK))
        self.lora_pool = LoRAPool(self.spec, rows, config.max_loras, self.dtype, self.device)
        disk = None
        if config.disk_store_dir is not None:
            disk = DiskStore(Path(config.disk_store_dir), config.disk_store_bytes, source or LocalDirSource())
        elif source is not None:
            disk = DiskStore(None, 0, source, copy=False)
        self.adapters = AdapterManager(self.spec, self.lora_pool, max_rank=config.max_lora_rank,
                                       max_bytes=config.max_adapter_bytes,
                                       host_budget_bytes=self.memory.host_cache_bytes,
                                       disk_store=disk, loader_threads=config.adapter_loader_threads,
                                       pin_memory=self.device.type == "cuda")
        self.scheduler = Scheduler(self.blocks, self.adapters, max_num_seqs=config.max_num_seqs,
                                   max_num_batched_tokens=config.max_num_batched_tokens)
        self.runner = ModelRunner(self.spec, self.model, self.lora_pool, self.blocks,
                                  config.max_num_batched_tokens, config.max_num_seqs, self.max_model_len,
                                  decode_graphs=self._graph_mode(config), max_lora_rank=config.max_lora_rank)
        self.sampler = Sampler()
        self.tokenizer = self._load_tokenizer(Path(config.tokenizer or config.model))
        self._ids = itertools.count()
        self._failed: list[RequestOutput] = []
        self.num_steps = 0
        self.last_step: StepInfo | None = None
        log.info(f"engine ready: {self.spec.arch} {self.spec.model_id}, {num_blocks} KV blocks of "
                 f"{config.block_size} tokens, LoRA pool {rows} rank-rows x {config.max_loras} slots")

    @staticmethod
    def _load_tokenizer(path: Path):
        if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
            log.warning(f"{path}: no tokenizer; only token-id prompts are accepted and no text is produced")
            return None
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(path))

    # ---- adapters ----
    def load_adapter(self, name: str, path: str | Path, identity: str | None = None) -> None:
        """Register and load now into host memory; raises AdapterError with the reason if the adapter is bad."""
        self.adapters.register(name, path, identity)
        self.adapters.load(name)

    def register_adapter(self, name: str, ref: str | Path, identity: str | None = None) -> None:
        """Make an adapter known without reading it: the first request that names it loads it just in time."""
        self.adapters.register(name, ref, identity)

    # ---- requests ----
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    adapter: str | None = None, request_id: str | None = None) -> str:
        """Queue a request. A bad request is not raised: it finishes at once with finish_reason='error'."""
        request_id = request_id or f"req-{next(self._ids)}"
        params = params or SamplingParams()
        text = prompt if isinstance(prompt, str) else None
        try:
            if not isinstance(params, SamplingParams):
                raise RequestError(f"params must be SamplingParams, not {type(params).__name__}")
            ids = self._prompt_ids(prompt)
            if adapter is not None:
                self.adapters.check(adapter)
                self.adapters.prefetch(adapter)      # starts loading now, before the request is scheduled
            eos = self.spec.eos_token_ids or ((self.tokenizer.eos_token_id,) if self.tokenizer else ())
            seq = Sequence(request_id, text, ids, params, adapter, None, tuple(eos), self.tokenizer,
                           self.max_model_len)
        except InferenceError as e:
            self._failed.append(self._failed_output(request_id, text, [], adapter, str(e)))
            return request_id
        except Exception as e:    # e.g. the tokenizer raising on this prompt: this request fails, not the engine
            log.exception(f"request {request_id} could not be queued")
            self._failed.append(self._failed_output(request_id, text, [], adapter,
                                                    f"the request could not be queued (internal error; reference "
                                                    f"{request_id} in the node's log)"))
            return request_id
        self.scheduler.add(seq)
        return request_id

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("this model has no tokenizer: send token ids")
            ids = self.tokenizer(prompt).input_ids
        else:
            ids = list(prompt)
            if any(not isinstance(t, int) or t < 0 or t >= self.spec.vocab_size for t in ids):
                raise RequestError(f"prompt token ids must be integers in [0, {self.spec.vocab_size})")
        if not ids:
            raise RequestError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise RequestError(f"the prompt has {len(ids)} tokens; this model's context is {self.max_model_len} "
                               f"(at least one token must be left to generate)")
        capacity = self.blocks.num_blocks * self.blocks.block_size
        if len(ids) + 1 > capacity:
            raise RequestError(f"the prompt has {len(ids)} tokens; the KV cache holds at most {capacity - 1}")
        return ids

    @staticmethod
    def _failed_output(request_id, prompt, ids, adapter, error) -> RequestOutput:
        return RequestOutput(request_id=request_id, prompt=prompt, prompt_token_ids=ids, adapter=adapter,
                             token_ids=[], text="", finished=True, finish_reason="error", error=error)

    def abort(self, request_id: str) -> RequestOutput | None:
        seq = self.scheduler.abort(request_id)
        return seq.output() if seq is not None else None

    def has_unfinished(self) -> bool:
        return bool(self._failed) or self.scheduler.has_unfinished()

    # ---- the loop ----
    def _graph_mode(self, config: EngineConfig) -> str:
        """"capture", "static" or "off" for the runner, with the reason logged."""
        capturable = self.device.type == "cuda" and self.backend.name == "triton"
        mode = config.decode_graphs
        if mode == "on" and not capturable:
            raise ValueError(f"decode_graphs='on' needs a CUDA device and the Triton kernel backend "
                             f"(device {self.device}, backend {self.backend.name})")
        if mode in ("on", "auto") and capturable:
            log.info("decode steps: CUDA graphs (captured per batch-size and LoRA-rank bucket on first use)")
            return "capture"
        if mode == "static":
            return "static"
        if mode == "auto" and self.device.type == "cuda":
            log.info(f"decode steps: eager (CUDA graphs need the Triton backend; this is {self.backend.name})")
        return "off"

    def step(self) -> list[RequestOutput]:
        outputs, self._failed = self._failed, []
        self.adapters.poll()
        sched = self.scheduler.schedule()
        outputs += [seq.output() for seq in sched.failed]
        if sched.empty:
            if not outputs and not self.scheduler.running and self.adapters.loading():
                self.adapters.wait_any(timeout=0.05)     # only loads are pending: wait for one, do not spin
            return outputs + self._unstick()
        result = self._run(sched)
        self.last_step = StepInfo(decode=all(s.num_new_tokens == 1 for s in sched.scheduled),
                                  num_seqs=len(sched.scheduled),
                                  num_tokens=sum(s.num_new_tokens for s in sched.scheduled))
        params = {s.seq.request_id: s.seq for s in sched.scheduled if s.sample}
        seqs = [params[r] for r in result.request_ids]
        samples = self.sampler(result.logits, [s.params for s in seqs], [s.generator for s in seqs])
        updated = self.scheduler.postprocess(sched, dict(zip(result.request_ids, samples)))
        self.num_steps += 1
        return outputs + [seq.output() for seq in updated]

    def _run(self, sched: SchedulerOutput) -> RunnerOutput:
        """The forward pass. If a batch of several sequences raises, each runs alone once (the same KV slots are
        rewritten, nothing was committed): the sequences that fail alone while another succeeds are the culprits and
        finish with an error (their blocks freed); a failure that no sequence escapes is engine-wide and raises
        (the caller marks the engine dead). A lone request that breaks the forward cannot be told from a broken
        engine: it raises too (limitation)."""
        try:
            return self.runner.run(sched)
        except Exception as e:
            if len(sched.scheduled) < 2:
                raise
            log.exception(f"a batched forward of {len(sched.scheduled)} sequences failed; running each alone once")
            first = e
        good: list[tuple[ScheduledSeq, RunnerOutput]] = []
        bad: list[tuple[ScheduledSeq, Exception]] = []
        for s in sched.scheduled:
            try:
                good.append((s, self.runner.run(SchedulerOutput(scheduled=[s], num_batched_tokens=s.num_new_tokens))))
            except Exception as e:
                bad.append((s, e))
        if not good:
            raise first
        for s, e in bad:
            log.error(f"request {s.seq.request_id} fails the forward pass alone", exc_info=e)
            s.seq.finish("error", f"the model failed on this request alone (internal error; reference "
                                  f"{s.seq.request_id} in the node's log); the other requests are unaffected")
            self._failed.append(s.seq.output())
            self.scheduler._retire(s.seq)
        sched.scheduled = [s for s, _ in good]
        outs = [r for _, r in good]
        return RunnerOutput(logits=torch.cat([r.logits for r in outs]),
                            request_ids=[rid for r in outs for rid in r.request_ids])

    def _unstick(self) -> list[RequestOutput]:
        """Nothing could be scheduled although requests wait: fail the head one if it can never fit."""
        sch = self.scheduler
        if sch.running or not sch.waiting:
            return []
        seq = sch.waiting[0]
        need = self.blocks.blocks_needed(len(seq.tokens) + 1)
        if need > self.blocks.num_blocks:
            why = (f"the sequence grew to {len(seq.tokens)} tokens, more than the KV cache holds "
                   f"({self.blocks.num_blocks} blocks of {self.blocks.block_size})")
        elif (seq.adapter is not None and seq.slot is None and self.adapters.status(seq.adapter) == "ready"
              and not self.adapters.loading() and all(i.refs == 0 for i in self.adapters.list())):
            why = f"adapter {seq.adapter!r} cannot be made resident in the LoRA pool"
        else:
            return []
        seq.finish("error", why)
        sch._retire(seq)
        return [seq.output()]
