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


class RequestRejected(NodeError):
    """A request the node will not serve: `status` (HTTP-style), a machine-readable `code`, and a sentence that
    never carries secrets or internal exception text. node/api.py turns it into an error response."""

    def __init__(self, status: int, code: str, message: str, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.code, self.type = status, code, type_


class ChainUnavailable(RequestRejected):
    """The chain could not be read (RPC down, timed out, wrong answer): 503, retry later. The message names no
    RPC URL (it may carry an API key)."""

    def __init__(self, what: str):
        super().__init__(503, "chain_unavailable", f"the chain is unavailable ({what}); retry later", "server_error")
