"""The multi-adapter inference engine: model runner, paged KV cache, scheduler, adapters, sampler, offline API.

Never imports aiohttp, web3, libp2p or sqlalchemy: the engine is usable (and testable) alone.
"""

from openlora.inference.engine import EngineConfig, LLMEngine
from openlora.inference.errors import AdapterError, InferenceError, ModelLoadError, RequestError
from openlora.inference.llm import LLM
from openlora.inference.sampling import SamplingParams
from openlora.inference.sequence import RequestOutput

__all__ = ["LLM", "LLMEngine", "EngineConfig", "SamplingParams", "RequestOutput", "InferenceError",
           "AdapterError", "ModelLoadError", "RequestError"]
