"""Content addressing, usable by every package above it (node, datanets, devnet, attribution): CIDs identical to
Kubo's `ipfs add --cid-version=1 --raw-leaves`, UnixFS and dag-pb, the verified blockstore, DAG walks and CAR files.

Imports only the standard library and `openlora.safejson`: never the engine, the chain or the node.
"""
