"""The root exception of the `node` package and its user-facing subclasses.

Every error a user can meet says what went wrong and what to do; the CLI prints `str(err)` as one line and exits
non-zero, never a traceback.
"""


class NodeError(Exception):
    """Root of every error raised by the `node` package."""


class ConfigError(NodeError, ValueError):
    """The config file or an environment override is missing, malformed or out of range."""


class KeystoreError(NodeError, ValueError):
    """The keystore is missing, unreadable, or the password does not open it."""
