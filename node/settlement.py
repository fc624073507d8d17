"""The settlement loop: pending receipts -> a Merkle batch -> `Settlement.settleBatch` -> confirmed -> settled.

What it does: batches pending receipts by count or age; for each requester debits the sum of its receipts'
prices, backed by the highest voucher the node stored, within what the chain says is left (cap - debited, lane
balance); turns the receipts' prices x attribution weights into exact credits (attribution.split.batch_credits,
protocol fee from the deployment, rounding remainders to the operator); publishes every receipt with its node
signature to <publish_dir>/<batchId>.json (the header's receiptsUri is its file:// URI, or the URI returned by the
`publish` callable it is given: the wiring's puts the file into the IPFS blockstore, ipfs://CID); persists the batch
BEFORE sending; signs and sends the transaction with the node's key; waits for confirmations; marks receipts
settled. Crash-safe: on (re)start every prepared/submitted batch is resumed — the contract's batchId =
keccak(node, receiptsRoot) is checked (`creditsRootOf`) before anything is (re)sent, so a batch settles once.
RPC outages are retried with exponential backoff (`run`); nothing is lost, the receipts stay in the store.
What it does not do: write receipts (the API does), verify vouchers (the API does before `record_voucher`), or
know how receipts reach IPFS or the DHT (it imports neither node.ipfs nor node.p2p; an import-linter contract).

Chain access is a sync web3 `Web3` (HTTPProvider) used from a worker thread (`asyncio.to_thread`): one thread
at a time settles (a lock), the event loop never blocks on RPC.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from eth_utils import to_checksum_address
from web3.exceptions import ContractLogicError, TransactionNotFound

from openlora.attribution.batch import Batch, Debit, receipt_credits
from openlora.attribution.deployment import Deployment
from openlora.attribution.eip712 import Domain, Voucher, is_signed_by
from openlora.attribution.receipts import checksum, dumps, receipt_hash
from openlora.attribution.chain import redact, send_raw, sign_call
from openlora.fsutil import atomic_write
from openlora.node.errors import ChainUnavailable, NodeError
from openlora.node.storage import Store

# (the receipts file's bytes, its batch id) -> the URI that goes on chain as the batch's receiptsUri. Called on the
# settlement worker thread; if it raises, `prepare` raises before the batch is created (the receipts stay pending).
PublishReceipts = Callable[[bytes, str], str]

log = logging.getLogger("openlora.settlement")
ZERO32 = bytes(32)


class SettlementError(NodeError):
    """A batch could not be settled (rejected by the contract, not mined in time)."""


PENDING = object()            # _wait_receipt: the transaction is still in the pool
FEE_BUMP_NUM, FEE_BUMP_DEN = 9, 8          # a replacement pays at least 12.5% more on both fee fields


def _is_connection_error(e: BaseException) -> bool:
    import requests
    from web3.exceptions import ProviderConnectionError, TimeExhausted
    return isinstance(e, (requests.exceptions.RequestException, ConnectionError, OSError, ProviderConnectionError,
                          TimeExhausted, TimeoutError))


def rpc_url(w3: Any) -> str:
    """The chain's RPC URL for messages: scheme, host and port only (a path or query may carry an API key)."""
    return redact(str(getattr(w3.provider, "endpoint_uri", None) or w3.provider))


batch_credit_map = receipt_credits      # the credits of a batch of receipts (attribution/batch.py)


class SettlementLoop:
    def __init__(self, store: Store, w3: Any, deployment: Deployment, account: Any, batch_max_receipts: int = 256,
                 batch_max_age_s: float = 30.0, confirmations: int = 1, publish_dir: Path | str = "receipts",
                 operator: str | None = None, retry_base_s: float = 1.0, retry_max_s: float = 60.0,
                 mine_timeout_s: float = 120.0, poll_s: float = 0.5, max_fee_per_gas_wei: int = 0,
                 publish: PublishReceipts | None = None):
        self.store, self.w3, self.dep, self.account = store, w3, deployment, account
        self.node = to_checksum_address(account.address)
        self.operator = to_checksum_address(operator or account.address)
        self.max_receipts, self.max_age_s = batch_max_receipts, batch_max_age_s
        self.confirmations = max(1, confirmations)
        self.publish_dir = Path(publish_dir)
        self.fee_bps, self.protocol = deployment.protocol_fee_bps, to_checksum_address(deployment.protocol_recipient)
        self.domain = Domain(deployment.chain_id, deployment.address("Settlement"))
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self.mine_timeout_s, self.poll_s = mine_timeout_s, poll_s
        self.max_fee_per_gas_wei = max_fee_per_gas_wei          # 0: no cap on replacement fees
        # With `publish` the receipts file is also published elsewhere and its URI goes on chain (the node's wiring:
        # the IPFS blockstore, receiptsUri ipfs://CID, announced to the DHT); without it, its file:// URI.
        self.publish = publish
        self.metrics: dict[str, Any] = {"batches_settled": 0, "receipts_settled": 0, "chain_errors": 0,
                                        "last_error": None, "last_tx": None, "next_retry_s": 0.0,
                                        "replacements": 0}
        self._lock = threading.Lock()
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def settlement(self) -> Any:
        return self.dep.contract(self.w3, "Settlement")

    # ---- asyncio side --------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Settle until stop(): a batch when batch_max_receipts are pending or the oldest is batch_max_age_s old;
        failures back off exponentially (retry_base_s .. retry_max_s) and are retried, nothing is dropped."""
        if self._stop is None:
            self._stop = asyncio.Event()
        stop = self._stop
        delay = 0.0
        while not stop.is_set():
            wait = self.poll_s
            try:
                if delay or await asyncio.to_thread(self._due):
                    if await self.settle_once() is None:
                        # due but nothing batchable (receipts waiting for a voucher or a deposit): look again
                        # after batch_max_age_s rather than reading the chain every poll
                        wait = max(self.poll_s, self.max_age_s)
                delay = 0.0
            except Exception as e:  # noqa: BLE001 - the loop must survive anything; settle_once recorded it
                delay = min(max(delay * 2, self.retry_base_s), self.retry_max_s)
                log.warning("settlement failed (retry in %.1fs): %s", delay, e)
            self.metrics["next_retry_s"] = delay
            try:
                await asyncio.wait_for(stop.wait(), delay or wait)
            except asyncio.TimeoutError:
                pass

    def start(self) -> "asyncio.Task[None]":
        """Run the loop as a task of the running event loop (stop() ends it)."""
        if self._stop is None:
            self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="settlement")
        return self._task

    async def stop(self) -> None:
        """Ask the loop to stop and, if start() launched it, wait for the batch in progress (if any) to end."""
        if self._stop is None:
            self._stop = asyncio.Event()
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 30)
            except asyncio.TimeoutError:
                log.warning("settlement: a batch is still in flight at shutdown; it is resumed on the next start")

    async def settle_once(self) -> str | None:
        """Resume open batches, then build, submit and confirm one batch of pending receipts now. Returns the
        0x tx hash of the last batch settled, or None when there was nothing to settle."""
        return await asyncio.to_thread(self.settle_once_sync)

    # ---- worker-thread side --------------------------------------------------------------------------------

    def _due(self) -> bool:
        counts = self.store.counts()
        if counts["submitted"]:
            return True  # an open batch to resume
        if counts["pending"] >= self.max_receipts:
            return True
        oldest = self.store.oldest_pending_at()
        return oldest is not None and time.time() - oldest >= self.max_age_s

    def settle_once_sync(self) -> str | None:
        with self._lock:
            try:
                last = None
                for b in self.store.open_batches():
                    last = self._advance(b) or last
                b = self.prepare()
                if b is not None:
                    last = self._advance(b) or last
                return last
            except Exception as e:
                err: Exception = e
                if _is_connection_error(e):
                    err = ChainUnavailable(f"chain not reachable at {rpc_url(self.w3)}: {type(e).__name__}")
                elif not isinstance(e, SettlementError):
                    err = SettlementError(f"settlement failed: {type(e).__name__}: {e}")
                self.metrics["chain_errors"] += 1
                self.metrics["last_error"] = str(err)
                raise err from e

    def prepare(self) -> dict | None:
        """Select pending receipts that the vouchers and lanes cover, publish them and persist the batch (state
        'prepared'). Returns the stored batch, or None when nothing can be batched now."""
        st = self.settlement
        room: dict[str, int] = {}
        used: dict[str, tuple[int, bytes]] = {}
        waiting = 0
        for req in self.store.pending_requesters():
            req = checksum(req)
            v = self.store.voucher(req)
            if v is not None and not is_signed_by(Voucher(req, self.node, v[0]), self.domain, v[1], req):
                log.warning("the stored voucher of %s is not its signature for this node: ignored", req)
                v = None
            if v is None:
                waiting += 1
                continue
            debited = st.functions.debited(req, self.node).call()
            balance = st.functions.balanceOf(req, self.node).call()
            room[req], used[req] = max(0, min(v[0] - debited, balance)), v
        # only requesters with a usable voucher are read, so a backlog that waits for a voucher never starves them
        pending = self.store.pending(self.max_receipts, requesters=[r.lower() for r in room], free=True)
        chosen, amounts, free = [], {}, []
        for r in pending:
            req = checksum(r.requester)
            if r.price == 0:
                free.append(r)
            elif amounts.get(req, 0) + r.price <= room.get(req, 0):
                amounts[req] = amounts.get(req, 0) + r.price
                chosen.append(r)
        if waiting:
            log.info("%d requester(s) with pending receipts have no usable voucher yet", waiting)
        if not chosen:
            if free:
                self.store.mark_free_settled([r.request_id for r in free])
            return None
        chosen += free  # zero-priced receipts ride along (in the root, no debit)
        total = sum(amounts.values())
        debits = []
        for req, amount in amounts.items():
            cap, sig = used[req]
            debits.append(Debit(req, cap, amount, sig))
        credits = batch_credit_map(chosen, total, self.fee_bps, self.protocol, self.operator)
        hashes = [receipt_hash(r) for r in chosen]
        probe = Batch.build(self.node, hashes, "", debits, credits, self.fee_bps, self.protocol)
        bid = "0x" + probe.batch_id.hex()
        path = self.publish_dir / f"{bid}.json"
        text = dumps(chosen, batch_id=bid, node=self.node, receipts_root="0x" + probe.receipts_root.hex(),
                     chain_id=self.dep.chain_id, settlement=self.dep.address("Settlement"))
        atomic_write(path, text)
        uri = self.publish(text.encode("utf-8"), bid) if self.publish is not None else path.resolve().as_uri()
        self.store.create_batch(bid, [r.request_id for r in chosen], "0x" + probe.receipts_root.hex(), uri,
                                [{"requester": d.requester, "cap": str(d.cumulative_cap), "amount": str(d.amount),
                                  "signature": "0x" + d.signature.hex()} for d in debits], credits, total)
        log.info("batch %s prepared: %d receipts, %d requesters, total %d wei", bid, len(chosen), len(debits), total)
        return self.store.batch(bid)

    def _rebuild(self, b: dict) -> Batch:
        receipts = self.store.batch_receipts(b["batch_id"])
        debits = [Debit(d["requester"], int(d["cap"]), int(d["amount"]), bytes.fromhex(d["signature"][2:]))
                  for d in b["debits"]]
        batch = Batch.build(self.node, [receipt_hash(r) for r in receipts], b["receipts_uri"], debits, b["credits"],
                            self.fee_bps, self.protocol)
        if "0x" + batch.batch_id.hex() != b["batch_id"]:
            raise SettlementError(f"batch {b['batch_id']}: stored receipts no longer hash to its root")
        return batch

    def _fees(self, stuck: Any | None) -> dict:
        """EIP-1559 fees: the node's suggestion; for a replacement, at least FEE_BUMP over the stuck transaction's
        (nodes refuse a same-nonce replacement below +10% on both fields), capped by max_fee_per_gas_wei."""
        tip = int(self.w3.eth.max_priority_fee)
        base = int(self.w3.eth.get_block("latest").get("baseFeePerGas") or 0)
        fees = {"maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base + tip}
        if stuck is not None:
            old_tip = int(stuck.get("maxPriorityFeePerGas") or stuck.get("gasPrice") or 0)
            old_max = int(stuck.get("maxFeePerGas") or stuck.get("gasPrice") or 0)
            fees["maxPriorityFeePerGas"] = max(tip, old_tip * FEE_BUMP_NUM // FEE_BUMP_DEN + 1)
            fees["maxFeePerGas"] = max(fees["maxFeePerGas"], old_max * FEE_BUMP_NUM // FEE_BUMP_DEN + 1,
                                       fees["maxPriorityFeePerGas"])
        cap = self.max_fee_per_gas_wei
        if cap and fees["maxFeePerGas"] > cap:
            if stuck is not None:
                raise SettlementError(f"replacing the stuck settlement tx needs maxFeePerGas "
                                      f"{fees['maxFeePerGas']} wei, above settlement.max_fee_per_gas_wei = {cap}; "
                                      f"waiting for it to be mined")
            fees = {"maxFeePerGas": cap, "maxPriorityFeePerGas": min(fees["maxPriorityFeePerGas"], cap)}
        return fees

    def submit(self, b: dict, replace: bool = False) -> str:
        """Sign and send settleBatch for a stored batch; the tx hash is stored (state 'submitted') before the
        raw transaction leaves, so a crash right after sending is resumed by looking the hash up.

        replace=True: the batch's transaction is still pending after mine_timeout_s (fees too low for the
        market): send the same call with the same nonce and fees raised by at least 12.5%. Whichever of the two
        is mined settles the batch (the contract refuses a batch id twice); the other is void (same nonce).
        """
        batch = self._rebuild(b)
        fn = self.settlement.functions.settleBatch(*batch.settle_args())
        stuck = None
        if replace:
            stuck = self.w3.eth.get_transaction(b["tx_hash"])
            nonce = int(b["tx_nonce"])
        else:
            nonce = self.w3.eth.get_transaction_count(self.node, "pending")
        signed, nonce, tx = sign_call(self.w3, fn, self.account, nonce, self._fees(stuck))
        tx_hash = "0x" + bytes(signed.hash).hex()
        self.store.set_batch(b["batch_id"], state="submitted", tx_hash=tx_hash, tx_nonce=nonce, error=None)
        # "already known" (in the pool already) counts as sent. Anything else ("nonce too low": the key sent
        # something else meanwhile) propagates; the retry finds this hash unknown to the chain and sends anew.
        send_raw(self.w3, signed)
        if replace:
            self.metrics["replacements"] += 1
            log.warning("batch %s: tx %s still pending after %.0fs; replaced by %s (nonce %d, maxFeePerGas %d -> %d "
                        "wei)", b["batch_id"], b["tx_hash"], self.mine_timeout_s, tx_hash, nonce,
                        int(stuck.get("maxFeePerGas") or stuck.get("gasPrice") or 0), tx["maxFeePerGas"])
        else:
            log.info("batch %s submitted in tx %s (nonce %d)", b["batch_id"], tx_hash, nonce)
        return tx_hash

    def _settled_log(self, batch_id: str) -> Any | None:
        bid = bytes.fromhex(batch_id[2:])
        st = self.settlement
        if st.functions.creditsRootOf(bid).call() == ZERO32:
            return None
        logs = st.events.BatchSettled().get_logs(from_block=self.dep.block, argument_filters={"batchId": bid})
        if not logs:
            raise SettlementError(f"batch {batch_id} is settled on chain but its BatchSettled event is not found")
        return logs[0]

    def _wait_receipt(self, tx_hash: str) -> Any | None:
        """The mined receipt; None when the node does not know the transaction (dropped / never sent); PENDING
        when it is still in the pool after mine_timeout_s."""
        deadline = time.monotonic() + self.mine_timeout_s
        while True:
            try:
                return self.w3.eth.get_transaction_receipt(tx_hash)
            except TransactionNotFound:
                pass
            try:
                self.w3.eth.get_transaction(tx_hash)
            except TransactionNotFound:
                return None
            if time.monotonic() > deadline:
                return PENDING
            time.sleep(self.poll_s)

    def _advance(self, b: dict) -> str | None:
        """Drive one stored batch to 'settled' (or 'failed'): check the chain first, (re)send only if needed."""
        bid = b["batch_id"]
        for _attempt in range(3):
            ev = self._settled_log(bid)
            if ev is not None:
                return self._finish(b, "0x" + bytes(ev["transactionHash"]).hex(), ev["blockNumber"])
            rcpt = self._wait_receipt(b["tx_hash"]) if b.get("tx_hash") else None
            if rcpt is PENDING:
                if self._settled_log(bid) is None:
                    self.submit(b, replace=True)
                    b = self.store.batch(bid)           # the replacement's hash, same nonce
                continue
            if rcpt is not None and rcpt["status"] == 1:
                continue  # mined: the next pass finds the event
            if rcpt is not None and rcpt["status"] == 0 and self._settled_log(bid) is None:
                return self._fail(b, f"tx {b['tx_hash']} reverted")
            try:
                self.submit(b)
                b = self.store.batch(bid)
            except ContractLogicError as e:
                if self._settled_log(bid) is None:
                    return self._fail(b, f"the contract rejects the batch: {e}")
        raise SettlementError(f"batch {bid}: not settled after 3 attempts; will retry")

    def _finish(self, b: dict, tx_hash: str, block: int) -> str:
        deadline = time.monotonic() + self.mine_timeout_s
        while self.w3.eth.block_number - block + 1 < self.confirmations:
            if time.monotonic() > deadline:
                raise SettlementError(f"batch {b['batch_id']}: {self.confirmations} confirmations not reached")
            time.sleep(self.poll_s)
        self.store.set_batch(b["batch_id"], state="settled", tx_hash=tx_hash, block=block, error=None)
        self.metrics["batches_settled"] += 1
        self.metrics["receipts_settled"] += b["receipt_count"]
        self.metrics["last_tx"] = tx_hash
        log.info("batch %s settled in tx %s (block %d)", b["batch_id"], tx_hash, block)
        return tx_hash

    def _fail(self, b: dict, why: str) -> None:
        """Mark the batch failed (its receipts go back to pending, re-batched on the next try) and raise, so that
        `run` backs off instead of rebuilding a rejected batch in a tight loop."""
        log.error("batch %s failed, its receipts go back to pending: %s", b["batch_id"], why)
        self.store.set_batch(b["batch_id"], state="failed", error=why)
        raise SettlementError(f"batch {b['batch_id']}: {why}")


async def start_settlement(cfg: Any, store: Store, chain: Any, account: Any,
                           publish: PublishReceipts | None = None) -> SettlementLoop:
    """The node's settlement loop from its config (node.config.NodeConfig), running as a task: `chain` has
    `.w3` (sync Web3) and `.deployment`; receipts are published under <home>/receipts/ and, with `publish`
    (node.wiring.Network.publish_receipts), wherever it puts them (receiptsUri = the URI it returns)."""
    loop = SettlementLoop(store, chain.w3, chain.deployment, account,
                          batch_max_receipts=cfg.settlement.batch_max_receipts,
                          batch_max_age_s=cfg.settlement.batch_max_age_s, confirmations=cfg.chain.confirmations,
                          publish_dir=cfg.home / "receipts", mine_timeout_s=cfg.settlement.replace_after_s,
                          max_fee_per_gas_wei=cfg.settlement.max_fee_per_gas_wei, publish=publish)
    loop.start()
    log.info("settlement loop started: a batch every %d receipts or %.0fs, %d confirmation(s), receipts published "
             "in %s", loop.max_receipts, loop.max_age_s, loop.confirmations, loop.publish_dir)
    return loop
