"""Errors of the content-addressing layer. Each names the CID it is about and says what to do.

What it does: one root (`ContentError`) and a few subclasses callers can tell apart, with builtin mixins.
What it does not do: logging or retries (fetchers decide that).
"""

from __future__ import annotations


class ContentError(Exception):
    """Root of every content-addressing error."""


class CidError(ContentError, ValueError):
    """A string or byte sequence is not a CID this node can use."""


class BlockError(ContentError):
    """A problem with one block; `cid` names it."""

    def __init__(self, cid, message: str):
        super().__init__(message)
        self.cid = cid


class BlockNotFoundError(BlockError, KeyError):
    """A block is in no store or from no provider that was asked."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class BlockVerificationError(BlockError, ValueError):
    """A block's bytes do not hash to its CID (corrupt or malicious data); nothing was stored."""


class DagError(BlockError, ValueError):
    """A block decodes to something that is not valid UnixFS, or its sizes disagree with its children."""
