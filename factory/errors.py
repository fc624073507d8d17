"""The Model Factory's one root exception and its kinds (one line each, saying what to do)."""

from __future__ import annotations


class FactoryError(Exception):
    """Root of every Model Factory error; its message is one line meant for a person."""


class FactoryInputError(FactoryError, ValueError):
    """Bad input: a hyper-parameter out of range, no rows, rows of the wrong shape, a base model mismatch."""


class TrainingInterrupted(FactoryError, KeyboardInterrupt):
    """Training was stopped (Ctrl-C); nothing was written."""


class ReproductionError(FactoryError):
    """A factory manifest cannot be reproduced here (unreadable, or from another kind of device)."""
