"""The one way this project connects to an EVM chain and sends a transaction (node, payouts, devnet alike).

What it does: `connect(rpc_url)` gives a web3 `Web3` over HTTP with a timeout and no silent retries (a caller
decides what to do when the chain is down); `redact(url)` shows an RPC URL without its path, query or credentials
(where API keys live) for messages; `sign_call(...)` builds a contract call with the chain id, the account's nonce
(or the one given, to replace a stuck transaction) and EIP-1559 fees (or the ones given), signed locally;
`send_raw(...)` sends it, treating "already known" (the same transaction is in the pool) as success;
`send_signed(...)` is both; `send_and_wait(...)` also waits for the receipt and raises on a revert.
What it does not do: decide fees for a stuck transaction (node/settlement.py bumps them), or keep keys.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from web3 import HTTPProvider, Web3
from web3.exceptions import Web3RPCError

from openlora.attribution.errors import AttributionError


class ChainError(AttributionError, RuntimeError):
    """A transaction reverted, or the chain did not answer as expected."""


def connect(rpc_url: str, timeout: float = 10.0) -> Web3:
    """A Web3 on `rpc_url` whose calls fail after `timeout` seconds instead of retrying behind the caller's back."""
    return Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None))


def redact(url: str) -> str:
    """scheme://host:port of an RPC URL: paths, queries and user:password often carry API keys."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or "?"
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "<rpc url>"


def sign_call(w3: Web3, fn: Any, account: Any, nonce: int | None = None,
              fees: dict[str, int] | None = None) -> tuple[Any, int, dict]:
    """(signed transaction, nonce, the transaction dict) for contract call `fn` from `account`. A revert in the
    gas estimate raises web3's ContractLogicError."""
    if nonce is None:
        nonce = w3.eth.get_transaction_count(account.address, "pending")
    tx = fn.build_transaction({"from": account.address, "nonce": nonce, "chainId": w3.eth.chain_id, **(fees or {})})
    return account.sign_transaction(tx), nonce, tx


def send_raw(w3: Web3, signed: Any) -> bytes:
    """Send a signed transaction; the same transaction already in the pool counts as sent. Returns its hash."""
    try:
        w3.eth.send_raw_transaction(signed.raw_transaction)
    except (ValueError, Web3RPCError) as e:
        if "already known" not in str(e).lower():
            raise
    return bytes(signed.hash)


def send_signed(w3: Web3, fn: Any, account: Any, nonce: int | None = None,
                fees: dict[str, int] | None = None) -> tuple[bytes, int]:
    """Sign locally and send a contract call; returns (tx hash, nonce)."""
    signed, nonce, _ = sign_call(w3, fn, account, nonce, fees)
    return send_raw(w3, signed), nonce


def send_and_wait(w3: Web3, fn: Any, account: Any, what: str, timeout: float = 60.0) -> Any:
    """Send and wait for the receipt; a failed estimate or a revert is a ChainError naming `what`."""
    try:
        tx_hash, _ = send_signed(w3, fn, account)
    except (ValueError, Web3RPCError) as e:  # ContractLogicError is a Web3RPCError / ValueError subclass
        raise ChainError(f"{what} failed: {e}") from None
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout)
    if receipt.status != 1:
        raise ChainError(f"{what} reverted (tx 0x{tx_hash.hex()})")
    return receipt
