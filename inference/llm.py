"""The offline API, in the spirit of vLLM's `LLM.generate`: batch many prompts, each with its own adapter.

    llm = LLM("path/to/hf-model-dir", dtype="float32", device="cpu")
    llm.load_adapter("law", "path/to/peft-adapter-dir")
    outs = llm.generate(["prompt a", [1, 2, 3]], SamplingParams(max_tokens=16, temperature=0.0, logprobs=1),
                        adapters=["law", None])

A bad request (unknown adapter, prompt too long...) comes back as an output with finish_reason="error" and the
reason in `.error`; the other requests of the call are served normally.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from pathlib import Path

from openlora.inference.engine import EngineConfig, LLMEngine
from openlora.inference.errors import RequestError
from openlora.inference.sampling import SamplingParams
from openlora.inference.sequence import RequestOutput


class LLM:
    def __init__(self, model: str | Path, **engine_kwargs):
        self.engine = LLMEngine(EngineConfig(model=str(model), **engine_kwargs))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def load_adapter(self, name: str, path: str | Path, identity: str | None = None) -> None:
        """Register and validate now (raises AdapterError with the reason); loaded to the device when used."""
        self.engine.load_adapter(name, path, identity)

    def register_adapter(self, name: str, ref: str | Path, identity: str | None = None) -> None:
        """Register without reading: loaded just in time by the first request that names it."""
        self.engine.register_adapter(name, ref, identity)

    def unload_adapter(self, name: str) -> None:
        self.engine.adapters.unregister(name)

    def pin_adapter(self, name: str, pinned: bool = True) -> None:
        self.engine.adapters.pin(name, pinned)

    def list_adapters(self):
        """Every adapter with its tier (device, host, loading, disk, failed), bytes, last use, hits and misses."""
        return self.engine.adapters.list()

    def adapter_metrics(self) -> dict:
        return self.engine.adapters.metrics()

    def generate(self, prompts: str | list[int] | Seq[str | list[int]],
                 params: SamplingParams | Seq[SamplingParams] | None = None,
                 adapters: str | None | Seq[str | None] = None) -> list[RequestOutput]:
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        n = len(prompts)
        plist = list(params) if isinstance(params, (list, tuple)) else [params or SamplingParams()] * n
        alist = list(adapters) if isinstance(adapters, (list, tuple)) else [adapters] * n
        if len(plist) != n or len(alist) != n:
            raise RequestError(f"{n} prompts but {len(plist)} sampling params and {len(alist)} adapters")
        ids = [self.engine.add_request(p, sp, a) for p, sp, a in zip(prompts, plist, alist)]
        final: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished():
            for out in self.engine.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[i] for i in ids]
