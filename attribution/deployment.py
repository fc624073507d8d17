"""Where the contracts live: the deployment file that `openlora-node devnet up` writes and the node reads.

What it does: a frozen `Deployment` (chain id, contract addresses, deployment block, artifacts hash, the protocol
fee settings) with JSON read/write, and `contract(w3, name)` that binds a committed ABI to its deployed address.
What it does not do: deploy anything (devnet.deploy does) or decide whether the chain still has the code
(devnet.deploy.is_live does).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address

from openlora.attribution import artifacts
from openlora.fsutil import atomic_write
from openlora.safejson import loads as safe_loads
from openlora.attribution.errors import AttributionError

DEPLOYMENT_VERSION = 1


class DeploymentError(AttributionError, ValueError):
    """The deployment file is missing, malformed, or names a contract it does not hold."""


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    block: int  # block of the last deployment transaction
    addresses: dict[str, str]  # contract name -> checksummed address
    artifacts_hash: str
    protocol_recipient: str
    protocol_fee_bps: int
    withdrawal_delay_s: int
    deployer: str
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. what the seeding created

    def address(self, name: str) -> str:
        try:
            return self.addresses[name]
        except KeyError:
            raise DeploymentError(f"the deployment has no {name} (it has {', '.join(self.addresses)})") from None

    def contract(self, w3: Any, name: str) -> Any:
        """A web3 contract object for `name` at its deployed address (web3.py Web3 or AsyncWeb3)."""
        return w3.eth.contract(address=self.address(name), abi=artifacts.load(name).abi)

    def to_json(self) -> str:
        return json.dumps({"version": DEPLOYMENT_VERSION, **asdict(self)}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "deployment") -> "Deployment":
        try:
            raw = safe_loads(text, max_bytes=1 << 20)  # a deployment file may come from elsewhere
            if raw.pop("version", None) != DEPLOYMENT_VERSION:
                raise DeploymentError(f"{source}: unsupported deployment file version (expected {DEPLOYMENT_VERSION})")
            raw["addresses"] = {k: to_checksum_address(v) for k, v in raw["addresses"].items()}
            return cls(**raw)
        except DeploymentError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise DeploymentError(f"{source} is not a valid deployment file ({e}); run `openlora-node devnet up` "
                                  f"again or fix the file") from None

    def write(self, path: Path) -> None:
        """Atomic write (a reader never sees half a file)."""
        atomic_write(path, self.to_json())


def read_deployment(path: Path) -> Deployment:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeploymentError(f"no deployment file at {path}: start a devnet with `openlora-node devnet up`") from None
    except OSError as e:
        raise DeploymentError(f"cannot read {path}: {e}") from None
    return Deployment.from_json(text, source=str(path))
