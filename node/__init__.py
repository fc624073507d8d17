"""openlora-node: the program. CLI, config, keystore, HTTP API, p2p, IPFS, storage and the wiring.

`node` may import every other package of the project; nothing imports `node`.
"""

__version__ = "0.1.0"
