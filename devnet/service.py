"""`devnet up | down | status` as functions: start or reuse Anvil, deploy once, seed once, write the deployment.

What it does: `up()` starts (or finds) the Anvil of a devnet directory, reuses the deployment recorded there when the
chain still runs it, else deploys every contract and seeds demo data, then writes `<dir>/deployment.json` and a
copy where the node reads it. `down()` stops only the Anvil that `up()` started for that directory (its state
is dumped, so the next `up` resumes it). `status()` reports what runs.
What it does not do: print (it reports through `progress`), or touch any other Anvil or port.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from web3 import Web3

from openlora.attribution.deployment import Deployment, DeploymentError, read_deployment
from openlora.devnet import chain
from openlora.devnet.deploy import deploy_all, dev_accounts, is_live
from openlora.devnet.seed import ROLES, seed

DEPLOYMENT_FILE = "deployment.json"


@dataclass(frozen=True)
class UpResult:
    anvil: chain.AnvilInfo
    started: bool
    deployed: bool
    deployment: Deployment
    deployment_paths: tuple[Path, ...]


def _w3(url: str) -> Web3:
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))


def up(d: Path, host: str = chain.DEFAULT_HOST, port: int = chain.DEFAULT_PORT,
       chain_id: int = chain.DEFAULT_CHAIN_ID, node_deployment_file: Path | None = None,
       progress: Callable[[str], Any] | None = None, home: Path | None = None) -> UpResult:
    """`home`: the node home whose blockstore receives the demo Datanet's blocks (seed.py); None keeps them in
    memory."""
    say = progress or (lambda msg: None)
    d = d.resolve()
    info, started = chain.start_anvil(d, host=host, port=port, chain_id=chain_id)
    say(f"anvil {'started' if started else 'already running'} at {info.url} (pid {info.pid}, chain id {chain_id})")
    w3 = _w3(info.url)
    dep_path = d / DEPLOYMENT_FILE
    dep: Deployment | None = None
    reason = "no deployment yet"
    if dep_path.exists():
        try:
            dep = read_deployment(dep_path)
            live, reason = is_live(w3, dep)
            if not live:
                dep = None
        except DeploymentError as e:
            dep, reason = None, str(e)
    deployed = dep is None
    if dep is None:
        say(f"deploying contracts ({reason})")
        accts = dev_accounts()
        dep = deploy_all(w3, accts[ROLES["deployer"]].address, accts[ROLES["protocol"]].address, progress=say)
        extra = seed(w3, dep, progress=say, home=home)
        dep = Deployment(**{**dep.__dict__, "block": extra["block"], "extra": extra})
        dep.write(dep_path)
    else:
        say(f"contracts already deployed at block {dep.block} (Settlement {dep.address('Settlement')}); reused")
    paths = [dep_path]
    if node_deployment_file is not None and node_deployment_file.resolve() != dep_path:
        dep.write(node_deployment_file)
        paths.append(node_deployment_file)
    say("deployment written to " + ", ".join(str(p) for p in paths))
    return UpResult(info, started, deployed, dep, tuple(paths))


def down(d: Path) -> chain.AnvilInfo | None:
    return chain.stop_anvil(d)


def status(d: Path) -> dict[str, Any]:
    d = d.resolve()
    out: dict[str, Any] = {"dir": str(d), "running": False}
    info = chain.anvil_status(d)
    dep_path = d / DEPLOYMENT_FILE
    if info is not None:
        out.update(running=True, pid=info.pid, url=info.url, chain_id=info.chain_id)
        try:
            out["block"] = int(chain.rpc(info.url, "eth_blockNumber"), 16)
        except Exception as e:  # noqa: BLE001 - status reports, never fails
            out["rpc_error"] = str(e)
    if dep_path.exists():
        try:
            dep = read_deployment(dep_path)
            out["deployment"] = {"file": str(dep_path), "block": dep.block, "addresses": dep.addresses}
            if info is not None:
                out["deployment"]["live"], out["deployment"]["reason"] = is_live(_w3(info.url), dep)
        except DeploymentError as e:
            out["deployment"] = {"file": str(dep_path), "error": str(e)}
    return out
