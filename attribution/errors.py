"""The root exception of the `attribution` package: every error it raises is an `AttributionError` (with a builtin
mixin where callers catch by kind, e.g. `ReceiptError(AttributionError, ValueError)`)."""


class AttributionError(Exception):
    """Root of every error raised by the `attribution` package."""
