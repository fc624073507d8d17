"""The multi-adapter inference engine: model runner, paged KV cache, scheduler, adapters, sampler, offline API.

Never imports aiohttp, web3, libp2p or sqlalchemy: the engine is usable (and testable) alone.
"""
