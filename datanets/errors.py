"""Errors of the Datanets package: one root, `DatanetError`, whose message is one line saying what is wrong.

What it does: `DatanetError` (root), `ContributionError` (a file refused before anything is stored or sent),
`VerificationError` (a version manifest that does not match its content, naming exactly what differs).
What it does not do: chain errors (`openlora.attribution.chain.ChainError`) or content errors (ContentError).
"""

from __future__ import annotations


class DatanetError(Exception):
    """Root of every Datanets error."""


class ContributionError(DatanetError, ValueError):
    """A contribution file was refused (empty, oversized, binary, not UTF-8, malformed); nothing was stored."""


class VerificationError(DatanetError, ValueError):
    """A version manifest, a row or a weight does not match what the content says."""
