"""Errors of the node's IPFS layer (fetching, adapter store) on top of openlora.content's.

`IpfsError` is content's root (`ContentError`), so one `except IpfsError` still catches a bad CID, a missing or
corrupt block and a failed fetch alike; the CLI prints every one of them as one line.
"""

from __future__ import annotations

from openlora.content.errors import (BlockError, BlockNotFoundError, BlockVerificationError, CidError,  # noqa: F401
                                     ContentError, DagError)
from openlora.node.errors import NodeError

IpfsError = ContentError


class FetchError(ContentError, NodeError):
    """No source could deliver a DAG; the message lists what each source said."""
