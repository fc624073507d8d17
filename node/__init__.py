"""openlora-node: the program. CLI, config, keystore, HTTP API, p2p, IPFS, storage and the wiring.

`node` may import every other package of the project; nothing imports `node`.
"""

from openlora import __version__

__all__ = ["__version__"]
