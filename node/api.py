"""The node's HTTP API (aiohttp): OpenAI-compatible completions and chat, models, receipts, health, metrics, admin.

What it does: turns OpenAI request bodies into engine requests (the official `openai` client works unchanged; the
signed authorisation travels in `extra_body={"openlora": ...}`), verifies signed requests before any compute
(node/auth.py), streams tokens by server-sent events, and commits a receipt for every served request before the
response ends (the final chunk / [DONE] is sent only after the commit). Errors are JSON
`{"error": {"message", "type", "code"}}` with a 4xx/5xx status; a bad request never disturbs the others.
What it does not do: settle receipts (node/settlement.py), price adapters (attribution/pricing.py), or run the
engine loop (inference.client.AsyncEngine).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from openlora.inference import AdapterError, RequestError, SamplingParams
from openlora.inference.client import GenerateRequest
from openlora.node.auth import AuthError, verify
from openlora.node.metrics import Metrics
from openlora.safejson import UnsafeJSONError
from openlora.safejson import loads as safe_loads

log = logging.getLogger("openlora.api")
MAX_BODY = 4 * 2**20
MAX_AUTH_HEADER = 64 * 2**10  # aiohttp already refuses header lines over 8 KiB


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.code, self.type = status, code, type_


def error_response(status: int, code: str, message: str, type_: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "code": code}}, status=status)


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


@dataclass
class NodeService:
    """Everything the handlers use; built by node/runner.py (the wiring) or by tests."""
    engine: Any                                  # inference.LLMEngine (read-only use: tokenizer, spec, adapters)
    client: Any                                  # inference.client.AsyncEngine
    node_address: str
    base_model: str
    free_local_mode: bool
    admin_token: str = ""
    store: Any = None                            # node.storage.Store (nonces, vouchers, receipts)
    domain: Any = None                           # attribution.eip712.Domain when a chain is configured
    lane_of: Callable[[str], tuple[int, int]] | None = None
    price_per_token: Callable[[str | None], int] = lambda cid: 0             # adapter cid (None: base) -> wei/token
    write_receipt: Callable[[ServedRequest], Any] | None = None              # commits; returns the receipt id
    catalog: dict[str, str | None] = field(default_factory=dict)            # model name -> adapter CID (None: local)
    readiness: Callable[[], dict[str, bool | str]] = lambda: {}
    settlement: Any = None                       # node.settlement.SettlementLoop, when a chain is configured
    metrics: Metrics = field(default_factory=Metrics)

    # ---- model resolution ----
    def resolve(self, model: Any) -> tuple[str | None, str | None]:
        """(engine adapter name or None for the base model, adapter CID or None)."""
        if not isinstance(model, str) or not model:
            raise ApiError(400, "invalid_model", "'model' must name the base model, an adapter name or an adapter CID")
        if model == self.base_model:
            return None, None
        if model in self.catalog:
            return model, self.catalog[model]
        for name, cid in self.catalog.items():
            if cid == model:
                return name, cid
        raise ApiError(404, "model_not_found", f"unknown model {model!r}: this node serves {self.base_model!r} and "
                                               f"{len(self.catalog)} adapter(s); see GET /v1/models")


def _sampling(body: dict, chat: bool) -> SamplingParams:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 16 if not chat else 256))
    if body.get("n", 1) != 1:
        raise ApiError(400, "unsupported", "n > 1 is not supported; send one request per completion")
    if body.get("echo"):
        raise ApiError(400, "unsupported", "echo is not supported")
    if chat:
        logprobs = body.get("top_logprobs", 0) if body.get("logprobs") else None
    else:
        logprobs = body.get("logprobs")
    stop = body.get("stop") or ()
    try:
        return SamplingParams(max_tokens=max_tokens, temperature=float(body.get("temperature", 1.0)),
                              top_p=float(body.get("top_p", 1.0)), top_k=int(body.get("top_k", -1)),
                              seed=body.get("seed"), stop=(stop,) if isinstance(stop, str) else tuple(stop),
                              logprobs=logprobs, ignore_eos=bool(body.get("ignore_eos", False)))
    except (TypeError, ValueError) as e:
        raise ApiError(400, "invalid_parameter", str(e)) from None


def _prompt(svc: NodeService, body: dict, chat: bool) -> str | list[int]:
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise ApiError(400, "invalid_messages", "'messages' must be a non-empty list of {role, content} strings")
        tok = svc.engine.tokenizer
        if tok is None or not getattr(tok, "chat_template", None):
            raise ApiError(400, "no_chat_template", "this base model has no chat template; use /v1/completions")
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    prompt = body.get("prompt")
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    raise ApiError(400, "invalid_prompt", "'prompt' must be a non-empty string or a list of token ids "
                                          "(one prompt per request)")


def _logprobs_json(out, chat: bool, tok) -> Any:
    if out.logprobs is None:
        return None
    toks = [tok.decode([t]) if tok is not None else str(t) for t in out.token_ids]
    if chat:
        return {"content": [{"token": s, "logprob": lp, "top_logprobs": [
            {"token": tok.decode([k]) if tok is not None else str(k), "logprob": v} for k, v in top.items()]}
            for s, lp, top in zip(toks, out.logprobs, out.top_logprobs)]}
    return {"tokens": toks, "token_logprobs": out.logprobs,
            "top_logprobs": [{(tok.decode([k]) if tok is not None else str(k)): v for k, v in top.items()}
                             for top in out.top_logprobs]}


async def _read_json(request: web.Request) -> dict:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "body_too_large", f"the body exceeds {MAX_BODY} bytes")
    try:
        body = safe_loads(await request.read(), max_bytes=MAX_BODY)  # bounded size and depth: see safejson.py
    except UnsafeJSONError as e:
        raise ApiError(400, "invalid_json", f"the body is not acceptable JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body


async def generate(request: web.Request, chat: bool) -> web.StreamResponse:
    svc: NodeService = request.app["svc"]
    t0 = time.monotonic()
    body = await _read_json(request)
    adapter, cid = svc.resolve(body.get("model"))
    params = _sampling(body, chat)
    prompt = _prompt(svc, body, chat)
    try:
        prompt_ids = svc.engine._prompt_ids(prompt)
        if adapter is not None:
            svc.engine.adapters.check(adapter)
    except AdapterError as e:
        raise ApiError(424, "adapter_unavailable", str(e)) from None
    except RequestError as e:
        raise ApiError(400, "invalid_prompt", str(e)) from None
    auth = body.get("openlora")
    if auth is None and request.headers.get("X-OpenLoRA-Auth"):
        try:
            auth = safe_loads(request.headers["X-OpenLoRA-Auth"], max_bytes=MAX_AUTH_HEADER, max_depth=8)
        except UnsafeJSONError as e:
            raise ApiError(400, "invalid_auth", f"the X-OpenLoRA-Auth header is not acceptable JSON: {e}") from None
    authorized = None
    if not (svc.free_local_mode and auth is None):
        if svc.domain is None or svc.store is None or svc.lane_of is None:
            raise ApiError(503, "chain_unavailable", "signed requests need the chain and the receipt store; "
                                                     "neither is configured on this node", "server_error")
        max_cost = svc.price_per_token(cid) * (len(prompt_ids) + params.max_tokens)
        try:
            authorized = await asyncio.to_thread(
                verify, auth, body, domain=svc.domain, node=svc.node_address, adapter_cid=cid,
                max_tokens=params.max_tokens, max_cost=max_cost, ledger=svc.store, lane_of=svc.lane_of)
        except AuthError as e:
            svc.metrics.rejected.labels(code=e.code).inc()
            raise ApiError(e.status, e.code, str(e), "authorization_error") from None
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    model_name = body["model"]
    stream = bool(body.get("stream"))
    gen = svc.client.submit(GenerateRequest(prompt_ids, params, adapter, request_id=rid))
    label = adapter or "base"
    svc.metrics.requests.labels(adapter=label).inc()

    async def finish(out) -> dict:
        """Commit the receipt (when the request was signed or a store exists) before anything final is sent."""
        if out.error:
            raise ApiError(500 if out.finish_reason == "error" else 400, "generation_failed", out.error, "server_error")
        usage = {"prompt_tokens": len(out.prompt_token_ids), "completion_tokens": len(out.token_ids),
                 "total_tokens": len(out.prompt_token_ids) + len(out.token_ids)}
        extra = {}
        if svc.write_receipt is not None and (authorized is not None or svc.store is not None):
            served = ServedRequest(rid, authorized.request.requester if authorized else None, cid,
                                   usage["prompt_tokens"], usage["completion_tokens"],
                                   authorized.digest if authorized else None,
                                   authorized.request.maxPrice if authorized else None)
            try:
                extra["receipt"] = await asyncio.to_thread(svc.write_receipt, served)
            except Exception as e:
                log.exception("receipt commit failed")
                raise ApiError(503, "receipt_store_unavailable", f"the receipt could not be committed: {e}",
                               "server_error") from None
            svc.metrics.receipts.inc()
        dt = time.monotonic() - t0
        svc.metrics.latency.labels(adapter=label).observe(dt)
        svc.metrics.tokens.labels(adapter=label).inc(usage["completion_tokens"])
        if out.first_token_time is not None:
            svc.metrics.ttft.labels(adapter=label).observe(max(0.0, out.first_token_time - out.arrival_time))
        return {"usage": usage, "openlora": {"request_id": rid, **extra}}

    created = int(time.time())
    tok = svc.engine.tokenizer
    if not stream:
        final = None
        async for out in gen:
            final = out
        tail = await finish(final)
        reason = final.finish_reason if final.finish_reason in ("stop", "length") else "stop"
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": final.text},
                      "logprobs": _logprobs_json(final, True, tok), "finish_reason": reason}
        else:
            choice = {"index": 0, "text": final.text, "logprobs": _logprobs_json(final, False, tok),
                      "finish_reason": reason}
        return web.json_response({"id": rid, "object": "chat.completion" if chat else "text_completion",
                                  "created": created, "model": model_name, "choices": [choice], **tail})

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    obj = "chat.completion.chunk" if chat else "text_completion"

    async def send(payload: dict) -> None:
        await resp.write(f"data: {json.dumps(payload)}\n\n".encode())

    if chat:
        await send({"id": rid, "object": obj, "created": created, "model": model_name,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    final = None
    async for out in gen:
        final = out
        if out.new_text and not out.finished:
            delta = {"content": out.new_text} if chat else None
            choice = {"index": 0, "delta": delta, "finish_reason": None} if chat else \
                {"index": 0, "text": out.new_text, "logprobs": None, "finish_reason": None}
            await send({"id": rid, "object": obj, "created": created, "model": model_name, "choices": [choice]})
    try:
        tail = await finish(final)
    except ApiError as e:
        await send({"error": {"message": str(e), "type": e.type, "code": e.code}})
        await resp.write_eof()
        return resp
    reason = final.finish_reason if final.finish_reason in ("stop", "length") else "stop"
    last_text = final.new_text
    choice = ({"index": 0, "delta": {"content": last_text} if last_text else {}, "finish_reason": reason} if chat
              else {"index": 0, "text": last_text, "logprobs": None, "finish_reason": reason})
    await send({"id": rid, "object": obj, "created": created, "model": model_name, "choices": [choice], **tail})
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, str(e), e.type)
    except web.HTTPException:
        raise
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as e:  # a bug must fail one request with a 500, never the server
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"{type(e).__name__}: {e}", "server_error")


async def completions(request: web.Request) -> web.StreamResponse:
    return await generate(request, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await generate(request, chat=True)


async def models(request: web.Request) -> web.Response:
    svc: NodeService = request.app["svc"]
    tiers = {i.name: i.tier for i in svc.engine.adapters.list()}
    data = [{"id": svc.base_model, "object": "model", "owned_by": "openlora-node", "openlora": {"kind": "base"}}]
    for name, cid in sorted(svc.catalog.items()):
        data.append({"id": name, "object": "model", "owned_by": "openlora-node",
                     "openlora": {"kind": "adapter", "cid": cid, "tier": tiers.get(name, "unknown")}})
    return web.json_response({"object": "list", "data": data})


def _price_or_none(svc: NodeService, cid: str | None) -> int | None:
    try:
        return svc.price_per_token(cid)
    except ApiError:
        return None          # e.g. an adapter not registered on chain: it cannot be bought here


async def node_info(request: web.Request) -> web.Response:
    """What a client needs to sign: the node's address and domain, prices, and (given ?requester=) its standing."""
    svc: NodeService = request.app["svc"]
    info: dict[str, Any] = {
        "address": svc.node_address, "base_model": svc.base_model, "free_local_mode": svc.free_local_mode,
        "max_model_len": svc.engine.max_model_len,
        "chain_id": svc.domain.chain_id if svc.domain else None,
        "settlement": svc.domain.verifying_contract if svc.domain else None,
        "price_per_token": {name: _price_or_none(svc, cid) for name, cid in
                            [(svc.base_model, None), *sorted(svc.catalog.items())]},
        "adapters": {name: cid for name, cid in sorted(svc.catalog.items())},
    }
    requester = request.query.get("requester")
    if requester and svc.store is not None and svc.lane_of is not None:
        from eth_utils import is_address, to_checksum_address
        if not is_address(requester):
            raise ApiError(400, "invalid_address", f"requester {requester!r} is not an address")
        requester = to_checksum_address(requester)
        pending = await asyncio.to_thread(svc.store.unsettled_charges, requester)
        deposit, debited = await asyncio.to_thread(svc.lane_of, requester)
        info["requester"] = {"address": requester, "pending": pending, "debited": debited, "deposit": deposit}
    return web.json_response(info)


async def receipt(request: web.Request) -> web.Response:
    svc: NodeService = request.app["svc"]
    if svc.store is None:
        raise ApiError(404, "no_receipts", "this node keeps no receipts (no store configured)")
    r = await asyncio.to_thread(svc.store.get_receipt, request.match_info["request_id"])
    if r is None:
        raise ApiError(404, "receipt_not_found", f"no receipt for request {request.match_info['request_id']!r}")
    return web.json_response(r)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    svc: NodeService = request.app["svc"]
    checks = {"model": svc.engine is not None and svc.client._dead is None, **svc.readiness()}
    ready = all(v is True or v == "disabled" for v in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    svc: NodeService = request.app["svc"]
    counts = svc.store.counts() if svc.store is not None else {}
    body = svc.metrics.render(svc.engine, counts, svc.settlement.metrics if svc.settlement is not None else {})
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def _admin(request: web.Request) -> NodeService:
    svc: NodeService = request.app["svc"]
    if svc.admin_token:
        if request.headers.get("Authorization", "") != f"Bearer {svc.admin_token}":
            raise ApiError(401, "admin_token_required", "admin endpoints need 'Authorization: Bearer <admin_token>'")
    elif request.remote not in ("127.0.0.1", "::1"):
        raise ApiError(403, "admin_localhost_only", "admin endpoints are served to localhost only (no admin_token)")
    return svc


async def admin_load(request: web.Request) -> web.Response:
    svc = _admin(request)
    body = await _read_json(request)
    name, path, cid = body.get("name"), body.get("path"), body.get("cid")
    if not isinstance(name, str) or not name or not (isinstance(path, str) or isinstance(cid, str)):
        raise ApiError(400, "invalid_adapter", "give {name, path} or {name, cid}")
    try:
        await asyncio.to_thread(svc.engine.load_adapter, name, path or cid, cid)
    except AdapterError as e:
        raise ApiError(422, "invalid_adapter", str(e)) from None
    svc.catalog[name] = cid
    return web.json_response({"loaded": name, "cid": cid})


async def admin_unload(request: web.Request) -> web.Response:
    svc = _admin(request)
    name = request.match_info["name"]
    try:
        svc.engine.adapters.unregister(name)
    except AdapterError as e:
        raise ApiError(409 if "in use" in str(e) else 404, "unload_failed", str(e)) from None
    svc.catalog.pop(name, None)
    return web.json_response({"unloaded": name})


async def admin_pin(request: web.Request) -> web.Response:
    svc = _admin(request)
    body = await _read_json(request) if request.can_read_body else {}
    try:
        svc.engine.adapters.pin(request.match_info["name"], bool(body.get("pinned", True)))
    except AdapterError as e:
        raise ApiError(404, "unknown_adapter", str(e)) from None
    return web.json_response({"pinned": request.match_info["name"], "value": bool(body.get("pinned", True))})


def build_app(svc: NodeService) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY)
    app["svc"] = svc
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/receipts/{request_id}", receipt)
    app.router.add_get("/v1/node", node_info)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/admin/adapters", admin_load)
    app.router.add_delete("/admin/adapters/{name}", admin_unload)
    app.router.add_post("/admin/adapters/{name}/pin", admin_pin)
    return app
