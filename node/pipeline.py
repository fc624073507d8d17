"""One request's way through the node, step by step, with typed values between the steps:

    resolve the model -> check the signature (no tokenizing yet) -> tokenize (off the event loop) -> price
    -> reserve the maximum cost with the nonce -> submit to the engine -> stream -> attribute -> commit the receipt

What it does: `admit()` runs every check before compute and returns an `Admission` (the request id, the token ids,
the reservation); `outputs()` streams the engine's outputs; `commit()` writes the receipt of a finished request
(durable before the caller sends anything final) and `close_partial()` the receipt of a request whose client went
away (what was generated is owed), or releases the reservation when nothing was served. Cheap checks come first:
a prompt is bounded in characters before anything else, the signature is checked before the prompt is tokenized,
and tokenizing, chat templates, chain reads and database writes run in threads, never on the event loop.
Attribute: for an adapter with lineage, the completion's token ids (the prompt's are not searched) are matched
against the span index of the Datanet version it was trained on (node/attribution_index.py, in a worker thread;
the index build starts at admission so that it overlaps generation), and the receipt carries the vector and the
evidence (attribution/evidence.py). It runs before the receipt is committed, so the receipt is durable, with its
evidence, before the response ends. If attribution fails (the version's rows are not in this home), the receipt
has the static vector and no evidence, and the failure is logged.
What it does not do: speak HTTP (node/api.py translates to and from it), or settle receipts (node/settlement.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Callable

from openlora.inference import AdapterError, RequestError, SamplingParams
from openlora.inference.client import GenerateRequest
from openlora.node.auth import AuthError, Authorized, admit as admit_signed, check_signed
from openlora.node.errors import ChainUnavailable, RequestRejected
from openlora.node.metrics import Metrics

log = logging.getLogger("openlora.pipeline")
# A prompt longer than this many characters per token of context cannot fit (no tokenizer makes tokens that long
# on real text): refused before it is tokenized, so a multi-megabyte prompt costs a length check, not a tokenizer run.
MAX_PROMPT_CHARS_PER_TOKEN = 32


@dataclass
class ServedRequest:
    """What the receipt writer needs about one served request."""
    request_id: str
    requester: str | None
    adapter_cid: str | None
    prompt_tokens: int
    completion_tokens: int
    request_digest: bytes | None
    max_price: int | None
    attributed: Any = None       # attribution.attribute.Attributed (vector + evidence); None: static vector


@dataclass
class NodeService:
    """Everything the request path uses; built by node/wiring.py or by tests. The engine is reached only through
    `client` (inference.client.EngineClient), so that it can live in another process."""
    client: Any                                  # inference.client.EngineClient (AsyncEngine in-process)
    node_address: str
    free_local_mode: bool
    admin_token: str = ""
    store: Any = None                            # node.storage.Store (nonces, reservations, receipts)
    domain: Any = None                           # attribution.eip712.Domain when a chain is configured
    lane_of: Callable[[str], tuple[int, int]] | None = None   # requester -> (spendable deposit, debited); blocking
    price_per_token: Callable[[str | None], int] = lambda cid: 0             # adapter cid (None: base) -> wei/token
    write_receipt: Callable[[ServedRequest], Any] | None = None              # commits; returns the receipt id
    readiness: Callable[[], dict[str, bool | str]] = lambda: {}
    settlement: Any = None                       # node.settlement.SettlementLoop, when a chain is configured
    metrics: Metrics = field(default_factory=Metrics)
    name: str = "openlora-node"                  # node.name: how the operator calls this node (GET /v1/node)
    import_adapter: Callable[[str], str] | None = None   # local dir -> CID in the node's blockstore (validated)
    attributor: Any = None                       # node.attribution_index.Attributor (span attribution); None: static

    @property
    def base_model(self) -> str:
        return self.client.info.model_id

    def resolve(self, model: Any) -> tuple[str | None, str | None]:
        """(engine adapter name or None for the base model, adapter CID or None). The engine's adapter manager is
        the one registry of adapters: by name, or by CID (its identity)."""
        if not isinstance(model, str) or not model:
            raise RequestRejected(400, "invalid_model",
                                  "'model' must name the base model, an adapter name or an adapter CID")
        if model == self.base_model:
            return None, None
        found = self.client.find_adapter(model)
        if found is None:
            raise RequestRejected(404, "model_not_found", f"unknown model {model[:200]!r}: this node serves "
                                                          f"{self.base_model!r} and its adapters; see GET /v1/models")
        return found


@dataclass
class Admission:
    """A request that passed every check: what the engine runs and what its receipt needs."""
    request_id: str
    model: str
    adapter: str | None                          # the engine's adapter name (None: the base model)
    cid: str | None
    prompt_ids: list[int]
    params: SamplingParams
    authorized: Authorized | None                # None: a free local request
    reserved: int                                # wei held against the requester until commit / release
    started: float
    closed: bool = False                         # a receipt was written or the reservation released
    last_output: Any = None                      # the engine's latest output (RequestOutput), as it streams


def bound_prompt(prompt: str | list[int] | list[dict], max_model_len: int) -> None:
    """Refuse a text prompt (or chat) that cannot fit before any tokenizer or chat template sees it."""
    limit = max_model_len * MAX_PROMPT_CHARS_PER_TOKEN
    if isinstance(prompt, str):
        size = len(prompt)
    elif prompt and isinstance(prompt[0], dict):
        size = sum(len(m.get("content", "")) + len(m.get("role", "")) for m in prompt)
    else:
        return   # token ids: the engine checks their count against the context without tokenizing anything
    if size > limit:
        raise RequestRejected(400, "prompt_too_long", f"the prompt has {size:,} characters; this node's context is "
                                                      f"{max_model_len} tokens (at most {limit:,} characters)")


async def _tokenize(svc: NodeService, prompt: str | list[int] | list[dict], adapter: str | None) -> list[int]:
    """Chat template, tokenizer, adapter check: in the engine client's worker thread."""
    try:
        return await svc.client.tokenize(prompt, adapter)
    except AdapterError as e:
        raise RequestRejected(424, "adapter_unavailable", str(e)) from None
    except RequestError as e:
        raise RequestRejected(400, "invalid_prompt", str(e)) from None


async def admit(svc: NodeService, *, body: dict, prompt: str | list[int] | list[dict], params: SamplingParams,
                auth: Any, chat: bool) -> Admission:
    """Every check before compute, cheapest first. Raises RequestRejected (or ChainUnavailable)."""
    model = body.get("model")
    adapter, cid = svc.resolve(model)
    bound_prompt(prompt, svc.client.info.max_model_len)
    signed = None
    if not (svc.free_local_mode and auth is None):
        if svc.domain is None or svc.store is None or svc.lane_of is None:
            raise RequestRejected(503, "chain_unavailable", "signed requests need the chain and the receipt store; "
                                                            "neither is configured on this node", "server_error")
        try:  # fields, domain, node, deadline, prompt hash, signatures: no tokenizer, no database, no chain
            signed = await asyncio.to_thread(check_signed, auth, body, domain=svc.domain, node=svc.node_address,
                                             adapter_cid=cid, max_tokens=params.max_tokens)
        except AuthError as e:
            svc.metrics.rejected.labels(code=e.code).inc()
            raise RequestRejected(e.status, e.code, str(e), "authorization_error") from None
    prompt_ids = await _tokenize(svc, prompt, adapter)
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    authorized, reserved = None, 0
    if signed is not None:
        price = await asyncio.to_thread(svc.price_per_token, cid)
        max_cost = price * (len(prompt_ids) + params.max_tokens)
        try:
            authorized = await asyncio.to_thread(admit_signed, signed, max_cost=max_cost, request_id=rid,
                                                 ledger=svc.store, lane_of=svc.lane_of)
        except AuthError as e:
            svc.metrics.rejected.labels(code=e.code).inc()
            raise RequestRejected(e.status, e.code, str(e), "authorization_error") from None
        reserved = authorized.reserved
    elif cid is not None and svc.write_receipt is not None and svc.store is not None:
        # a free local request still gets a receipt, priced from the adapter's on-chain terms: an unregistered
        # adapter is refused here (404 adapter_not_registered), not after compute when the receipt is written
        await asyncio.to_thread(svc.price_per_token, cid)
    if svc.attributor is not None and cid is not None:
        svc.attributor.prepare(cid)          # loads or builds the version's span index while the request runs
    return Admission(rid, model, adapter, cid, prompt_ids, params, authorized, reserved, time.monotonic())


def outputs(svc: NodeService, adm: Admission) -> AsyncIterator[Any]:
    """The engine's outputs for an admitted request (the last one has finished=True). Closing the iterator early
    aborts the request in the engine."""
    svc.metrics.requests.labels(adapter=adm.adapter or "base").inc()
    return svc.client.submit(GenerateRequest(adm.prompt_ids, adm.params, adm.adapter, request_id=adm.request_id))


async def _release(svc: NodeService, adm: Admission) -> None:
    adm.closed = True
    if adm.reserved and svc.store is not None:
        await asyncio.shield(asyncio.to_thread(svc.store.release, adm.request_id))


async def _attribute(svc: NodeService, adm: Admission, completion_ids: list[int]) -> Any:
    """Span attribution of the completion (a worker thread); None (static vector, logged) when it cannot run."""
    if svc.attributor is None or adm.cid is None:
        return None
    try:
        found = await asyncio.to_thread(svc.attributor.attribute, adm.cid, list(completion_ids))
    except Exception as e:  # noqa: BLE001 - attribution must not lose the receipt: static vector instead
        log.warning("span attribution failed; the receipt gets the static vector",
                    extra={"fields": {"request_id": adm.request_id, "adapter": adm.cid,
                                      "error": f"{type(e).__name__}: {e}"[:300]}})
        return None
    return found


async def _write_receipt(svc: NodeService, adm: Admission, prompt_tokens: int, completion_ids: list[int]) -> str | None:
    """Attribute, then commit the receipt (durable when this returns); it replaces the request's reservation."""
    adm.closed = True
    if svc.write_receipt is None or (adm.authorized is None and svc.store is None):
        return None
    a = adm.authorized
    # a signed request never pays more than it reserved (nor than its signed maxPrice)
    cap = min(a.request.maxPrice, adm.reserved) if a is not None else None

    async def attribute_and_write() -> str:
        attributed = await _attribute(svc, adm, completion_ids)
        served = ServedRequest(adm.request_id, a.request.requester if a else None, adm.cid, prompt_tokens,
                               len(completion_ids), a.digest if a else None, cap, attributed)
        return await asyncio.to_thread(svc.write_receipt, served)
    try:  # shielded: a client that hangs up while the completion is attributed or the receipt written does not
        # cancel either: the receipt is committed all the same
        rid = await asyncio.shield(attribute_and_write())
    except Exception as e:
        log.error("receipt commit failed", extra={"fields": {"request_id": adm.request_id,
                                                             "error": type(e).__name__}})
        try:       # nothing is charged, so nothing stays reserved (if the store is down too: the next start frees it)
            await _release(svc, adm)
        except Exception:  # noqa: BLE001 - the store is down; logged above
            pass
        raise RequestRejected(503, "receipt_store_unavailable", "the receipt could not be committed; the request "
                                                                "is not charged", "server_error") from None
    svc.metrics.receipts.inc()
    return rid


async def commit(svc: NodeService, adm: Admission, out: Any) -> dict:
    """The finished request's receipt, then its usage; raises RequestRejected when generation failed (nothing is
    charged then)."""
    if out is None or out.error:
        await _release(svc, adm)
        message = out.error if out is not None else "the engine produced no output"
        status = 400 if out is not None and out.finish_reason != "error" else 500
        raise RequestRejected(status, "generation_failed", message, "server_error")
    usage = {"prompt_tokens": len(out.prompt_token_ids), "completion_tokens": len(out.token_ids),
             "total_tokens": len(out.prompt_token_ids) + len(out.token_ids)}
    extra = {}
    receipt = await _write_receipt(svc, adm, usage["prompt_tokens"], list(out.token_ids))
    if receipt is not None:
        extra["receipt"] = receipt
    label = adm.adapter or "base"
    svc.metrics.latency.labels(adapter=label).observe(time.monotonic() - adm.started)
    svc.metrics.tokens.labels(adapter=label).inc(usage["completion_tokens"])
    if out.first_token_time is not None:
        svc.metrics.ttft.labels(adapter=label).observe(max(0.0, out.first_token_time - out.arrival_time))
    return {"usage": usage, "openlora": {"request_id": adm.request_id, **extra}}


async def close_partial(svc: NodeService, adm: Admission) -> None:
    """The client went away (or the response failed) before the end: a receipt for the tokens generated so far,
    or, when none were, the reservation released. Never raises: it runs on the way out of a failed response."""
    if adm.closed:
        return
    last = adm.last_output
    try:
        generated = len(last.token_ids) if last is not None and not last.error else 0
        if generated == 0:
            await _release(svc, adm)
            return
        await _write_receipt(svc, adm, len(last.prompt_token_ids), list(last.token_ids))
        log.info("client left mid-stream; receipt for the tokens generated",
                 extra={"fields": {"request_id": adm.request_id, "completion_tokens": generated}})
    except Exception as e:  # logged; the reservation stays until the next start releases it
        log.error("could not close an interrupted request", extra={"fields": {"request_id": adm.request_id,
                                                                             "error": type(e).__name__}})


__all__ = ["Admission", "ChainUnavailable", "NodeService", "RequestRejected", "ServedRequest", "admit",
           "close_partial", "commit", "outputs", "bound_prompt"]
