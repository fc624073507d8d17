"""Deploying the OpenLoRA contracts with web3.py from the committed artifacts, and recognising a live deployment.

What it does: `deploy_all(w3, ...)` deploys the token, DatanetRegistry, AdapterRegistry, NodeRegistry and
Settlement in order and returns a `Deployment`; `is_live(w3, dep)` says whether the chain still holds that
deployment (same chain id, code at every address, artifacts unchanged), so `devnet up` never deploys twice.
`dev_accounts()` derives the devnet's well-known accounts (with private keys) from the fixed mnemonic.
What it does not do: start the chain (devnet.chain) or create demo data (devnet.seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from eth_account import Account
from web3 import Web3

from openlora.attribution import artifacts
from openlora.attribution.chain import ChainError, send_and_wait
from openlora.attribution.deployment import Deployment
from openlora.devnet.chain import DEFAULT_MNEMONIC, DevnetError

DEFAULT_FEE_BPS = 250  # 2.5% to the protocol
DEFAULT_WITHDRAWAL_DELAY_S = 3600


@dataclass(frozen=True)
class DevAccount:
    index: int
    address: str
    key: bytes


def dev_accounts(n: int = 10, mnemonic: str = DEFAULT_MNEMONIC) -> list[DevAccount]:
    """Anvil's accounts for `mnemonic` (m/44'/60'/0'/0/i), with keys for signing EIP-712 messages."""
    Account.enable_unaudited_hdwallet_features()
    out = []
    for i in range(n):
        acct = Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}")
        out.append(DevAccount(i, acct.address, bytes(acct.key)))
    return out


@lru_cache(maxsize=1)
def _dev_keys() -> dict[str, bytes]:
    return {a.address.lower(): a.key for a in dev_accounts()}


def send(w3: Web3, fn: Any, sender: str, what: str) -> Any:
    """Send a contract call from a devnet account and wait for it; a revert is a DevnetError. Well-known accounts
    sign locally through attribution.chain (the node's own send path); any other sender must be unlocked."""
    key = _dev_keys().get(sender.lower())
    if key is not None:
        try:
            return send_and_wait(w3, fn, Account.from_key(key), what, timeout=30)
        except ChainError as e:
            raise DevnetError(str(e)) from None
    try:
        tx = fn.transact({"from": sender})
    except Exception as e:  # web3 raises ContractLogicError & co. on a failed estimate
        raise DevnetError(f"{what} failed: {e}") from None
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    if receipt.status != 1:
        raise DevnetError(f"{what} reverted (tx {tx.hex()})")
    return receipt


def _deploy(w3: Web3, name: str, sender: str, *args: Any) -> tuple[str, int]:
    art = artifacts.load(name)
    receipt = send(w3, w3.eth.contract(abi=art.abi, bytecode=art.bytecode).constructor(*args), sender,
                   f"deploying {name}")
    return receipt.contractAddress, receipt.blockNumber


def deploy_all(w3: Web3, deployer: str, protocol_recipient: str, fee_bps: int = DEFAULT_FEE_BPS,
               withdrawal_delay_s: int = DEFAULT_WITHDRAWAL_DELAY_S, token: str | None = None,
               progress: Any = None) -> Deployment:
    """Deploy every contract; `token`: use an existing ERC-20 instead of deploying the devnet token."""
    say = progress or (lambda msg: None)
    addresses: dict[str, str] = {}
    block = 0
    if token is None:
        addresses["OpenLoRAToken"], block = _deploy(w3, "OpenLoRAToken", deployer, deployer)
        say(f"deployed OpenLoRAToken   at {addresses['OpenLoRAToken']}")
        token = addresses["OpenLoRAToken"]
    addresses["DatanetRegistry"], block = _deploy(w3, "DatanetRegistry", deployer)
    say(f"deployed DatanetRegistry at {addresses['DatanetRegistry']}")
    addresses["AdapterRegistry"], block = _deploy(w3, "AdapterRegistry", deployer, addresses["DatanetRegistry"])
    say(f"deployed AdapterRegistry at {addresses['AdapterRegistry']}")
    addresses["NodeRegistry"], block = _deploy(w3, "NodeRegistry", deployer)
    say(f"deployed NodeRegistry    at {addresses['NodeRegistry']}")
    addresses["Settlement"], block = _deploy(w3, "Settlement", deployer, Web3.to_checksum_address(token),
                                             Web3.to_checksum_address(protocol_recipient), fee_bps,
                                             withdrawal_delay_s)
    say(f"deployed Settlement      at {addresses['Settlement']}")
    return Deployment(chain_id=w3.eth.chain_id, block=block, addresses=addresses,
                      artifacts_hash=artifacts.artifacts_hash(), protocol_recipient=protocol_recipient,
                      protocol_fee_bps=fee_bps, withdrawal_delay_s=withdrawal_delay_s, deployer=deployer)


def is_live(w3: Web3, dep: Deployment) -> tuple[bool, str]:
    """(live, reason): whether `dep` is what this chain runs now."""
    if w3.eth.chain_id != dep.chain_id:
        return False, f"chain id is {w3.eth.chain_id}, the deployment is for {dep.chain_id}"
    if dep.artifacts_hash != artifacts.artifacts_hash():
        return False, "the contracts changed since that deployment (artifacts hash differs)"
    if w3.eth.block_number < dep.block:
        return False, f"the chain is at block {w3.eth.block_number}, before the deployment block {dep.block}"
    for name, addr in dep.addresses.items():
        if len(w3.eth.get_code(addr)) == 0:
            return False, f"no code at {name} {addr} (the chain was reset)"
    return True, "all contracts present"
