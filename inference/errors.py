"""Exceptions of the inference engine. One root (`InferenceError`), with builtin mixins so callers can catch
`ValueError` for bad input without knowing this package.

Every message says what went wrong and what to do, e.g. "adapter 'law' targets base model X, this node serves Y".
"""


class InferenceError(Exception):
    """Root of every error raised by the `inference` package."""


class ModelLoadError(InferenceError, ValueError):
    """The base model directory is unsupported, incomplete, or its weights do not match its config."""


class AdapterError(InferenceError, ValueError):
    """An adapter is malformed, does not fit the base model, or is unknown. Fails only its own requests."""


class RequestError(InferenceError, ValueError):
    """A request is invalid (prompt too long, bad sampling parameters...). Fails only that request."""


class EngineDeadError(InferenceError, RuntimeError):
    """The engine loop stopped on an unexpected error; no more requests can be served."""
