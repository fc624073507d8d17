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

from typing import Any

from aiohttp import web

from openlora.inference import AdapterError, RequestError, SamplingParams
from openlora.inference.errors import EngineDeadError
from openlora.node import pipeline
from openlora.node.errors import RequestRejected
from openlora.node.metrics import Metrics  # noqa: F401  (re-exported for callers that build a NodeService)
from openlora.node.pipeline import NodeService, ServedRequest  # noqa: F401  (the request path's types)
from openlora.safejson import UnsafeJSONError
from openlora.safejson import loads as safe_loads

log = logging.getLogger("openlora.api")
MAX_BODY = 4 * 2**20
INLINE_JSON_BYTES = 64 * 2**10   # bodies up to this size are parsed on the event loop (well under a millisecond)
MAX_AUTH_HEADER = 64 * 2**10  # aiohttp already refuses header lines over 8 KiB

ApiError = RequestRejected  # what handlers raise; the middleware turns it into an error response


def error_response(status: int, code: str, message: str, type_: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "code": code}}, status=status)


def _sampling(body: dict, chat: bool) -> SamplingParams:
    """The body's sampling fields -> SamplingParams, strictly: a value of the wrong JSON type ("0.5" or true for a
    number, 1.5 for an integer), NaN/Infinity, or out of range is a 400 invalid_parameter; nothing is coerced.
    `null` means the default. The limits are SamplingParams' (docs/api.md). Every field read here is type- and
    range-checked, so no non-finite number gets through even from a parser that allowed one (the body reader,
    safejson, already refuses them); the body is not walked (a 4 MiB token list would cost the event loop ~1 s)."""
    def bad(message: str) -> ApiError:
        return ApiError(400, "invalid_parameter", message)

    def get(name: str, default: Any = None) -> Any:
        v = body.get(name)
        return default if v is None else v

    n = get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int):
        raise bad(f"n={repr(n)[:40]}: must be the integer 1")
    if n != 1:
        raise ApiError(400, "unsupported", "n > 1 is not supported; send one request per completion")
    if body.get("echo"):
        raise ApiError(400, "unsupported", "echo is not supported")
    if not isinstance(get("stream", False), bool):
        raise bad(f"stream={repr(body['stream'])[:40]}: must be true or false")
    if chat:
        if not isinstance(get("logprobs", False), bool):
            raise bad(f"logprobs={repr(body['logprobs'])[:40]}: must be true or false in a chat request "
                      f"(top_logprobs says how many alternatives)")
        logprobs = get("top_logprobs", 0) if body.get("logprobs") else None
    else:
        logprobs = body.get("logprobs")
    max_tokens = get("max_completion_tokens", get("max_tokens", 256 if chat else 16))
    stop = get("stop", [])
    if not isinstance(stop, (str, list)):
        raise bad(f"stop={repr(stop)[:40]}: must be a string or a list of strings")
    try:
        return SamplingParams(max_tokens=max_tokens, temperature=get("temperature", 1.0), top_p=get("top_p", 1.0),
                              top_k=get("top_k", -1), seed=body.get("seed"), stop=stop, logprobs=logprobs,
                              ignore_eos=get("ignore_eos", False))
    except (TypeError, ValueError) as e:
        message = str(e)
        if body.get("max_completion_tokens") is not None and message.startswith("max_tokens="):
            message = "max_completion_tokens=" + message.removeprefix("max_tokens=")    # the name that was sent
        raise bad(message) from None


def _prompt(svc: NodeService, body: dict, chat: bool) -> str | list[int] | list[dict]:
    """The prompt as sent, validated for shape (chat: the messages; the template is applied off the event loop)."""
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise ApiError(400, "invalid_messages", "'messages' must be a non-empty list of {role, content} strings")
        if not svc.client.info.has_chat_template:
            raise ApiError(400, "no_chat_template", "this base model has no chat template; use /v1/completions")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    prompt = body.get("prompt")
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str) and prompt[0]:
        return prompt[0]
    raise ApiError(400, "invalid_prompt", "'prompt' must be a non-empty string or a list of token ids "
                                          "(one prompt per request)")


async def _logprobs_json(svc: NodeService, out, chat: bool) -> Any:
    if out.logprobs is None:
        return None
    alts = sorted({k for top in out.top_logprobs for k in top})
    texts = await svc.client.decode_each(list(out.token_ids) + alts)       # off the event loop
    toks, alt = texts[:len(out.token_ids)], dict(zip(alts, texts[len(out.token_ids):]))
    if chat:
        return {"content": [{"token": s, "logprob": lp, "top_logprobs": [
            {"token": alt[k], "logprob": v} for k, v in top.items()]}
            for s, lp, top in zip(toks, out.logprobs, out.top_logprobs)]}
    return {"tokens": toks, "token_logprobs": out.logprobs,
            "top_logprobs": [{alt[k]: v for k, v in top.items()} for top in out.top_logprobs]}


async def _read_json(request: web.Request) -> dict:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "body_too_large", f"the body exceeds {MAX_BODY} bytes")
    raw = await request.read()
    try:  # bounded size and depth (safejson.py); a large body is parsed in a thread, off the event loop
        body = (safe_loads(raw, max_bytes=MAX_BODY) if len(raw) <= INLINE_JSON_BYTES
                else await asyncio.to_thread(safe_loads, raw, max_bytes=MAX_BODY))
    except UnsafeJSONError as e:
        raise ApiError(400, "invalid_json", f"the body is not acceptable JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body


def _auth_object(body: dict, request: web.Request) -> Any:
    """The signed authorisation: the body's `openlora` object, or the X-OpenLoRA-Auth header as JSON."""
    auth = body.get("openlora")
    if auth is None and request.headers.get("X-OpenLoRA-Auth"):
        try:
            auth = safe_loads(request.headers["X-OpenLoRA-Auth"], max_bytes=MAX_AUTH_HEADER, max_depth=8)
        except UnsafeJSONError as e:
            raise ApiError(400, "invalid_auth", f"the X-OpenLoRA-Auth header is not acceptable JSON: {e}") from None
    return auth


async def generate(request: web.Request, chat: bool) -> web.StreamResponse:
    """HTTP <-> node/pipeline.py: parse, admit, stream or wait, commit; every step's rules live in the pipeline."""
    svc: NodeService = request.app["svc"]
    body = await _read_json(request)
    params = _sampling(body, chat)
    prompt = _prompt(svc, body, chat)
    adm = await pipeline.admit(svc, body=body, prompt=prompt, params=params, auth=_auth_object(body, request),
                               chat=chat)
    gen = pipeline.outputs(svc, adm)
    try:
        if not body.get("stream"):
            async for out in gen:
                adm.last_output = out
            tail = await pipeline.commit(svc, adm, adm.last_output)
            return await _final_response(svc, adm, adm.last_output, tail, chat)
        return await _stream(request, svc, adm, gen, chat)
    finally:
        # the client went away, the engine failed, or anything else ended the response early: stop generating at
        # once (closing the stream aborts the request in the engine), then what was generated is owed a receipt
        # (or, with nothing generated, the reservation is released); both are no-ops after a normal end
        try:
            await gen.aclose()
        finally:
            await pipeline.close_partial(svc, adm)


async def _final_response(svc: NodeService, adm: pipeline.Admission, final, tail: dict,
                          chat: bool) -> web.Response:
    reason = final.finish_reason if final.finish_reason in ("stop", "length") else "stop"
    logprobs = await _logprobs_json(svc, final, chat)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": final.text}, "logprobs": logprobs,
                  "finish_reason": reason}
    else:
        choice = {"index": 0, "text": final.text, "logprobs": logprobs, "finish_reason": reason}
    return web.json_response({"id": adm.request_id, "object": "chat.completion" if chat else "text_completion",
                              "created": int(time.time()), "model": adm.model, "choices": [choice], **tail})


async def _stream(request: web.Request, svc: NodeService, adm: pipeline.Admission, gen,
                  chat: bool) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    obj = "chat.completion.chunk" if chat else "text_completion"
    created, rid, model_name = int(time.time()), adm.request_id, adm.model

    async def send(payload: dict) -> None:
        await resp.write(f"data: {json.dumps(payload)}\n\n".encode())

    if chat:
        await send({"id": rid, "object": obj, "created": created, "model": model_name,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    final = None
    async for out in gen:
        final = adm.last_output = out
        if out.new_text and not out.finished:
            delta = {"content": out.new_text} if chat else None
            choice = {"index": 0, "delta": delta, "finish_reason": None} if chat else \
                {"index": 0, "text": out.new_text, "logprobs": None, "finish_reason": None}
            await send({"id": rid, "object": obj, "created": created, "model": model_name, "choices": [choice]})
    try:
        tail = await pipeline.commit(svc, adm, final)
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
    except EngineDeadError:  # the engine stopped on an engine-wide error: /healthz says so, a restart is needed
        return error_response(503, "engine_unavailable", "the engine stopped; this node must be restarted "
                                                         "(GET /healthz)", "server_error")
    except web.HTTPException:
        raise
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:  # a bug must fail one request with a 500, never the server, and never leak its text
        ref = uuid.uuid4().hex[:12]
        log.exception("unhandled error", extra={"fields": {"error_ref": ref, "path": request.path}})
        return error_response(500, "internal_error", f"internal error (reference {ref} in the node's log)",
                              "server_error")


async def completions(request: web.Request) -> web.StreamResponse:
    return await generate(request, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await generate(request, chat=True)


async def models(request: web.Request) -> web.Response:
    svc: NodeService = request.app["svc"]
    data = [{"id": svc.base_model, "object": "model", "owned_by": "openlora-node", "openlora": {"kind": "base"}}]
    for i in sorted(await svc.client.adapters(), key=lambda i: i.name):
        data.append({"id": i.name, "object": "model", "owned_by": "openlora-node",
                     "openlora": {"kind": "adapter", "cid": i.identity, "tier": i.tier, "pinned": i.pinned}})
    return web.json_response({"object": "list", "data": data})


def _prices(svc: NodeService, adapters: dict[str, str | None]) -> dict[str, int | None]:
    """Blocking (chain reads, cached): each model's price per token; None where it cannot be bought now."""
    out: dict[str, int | None] = {}
    for name, cid in [(svc.base_model, None), *sorted(adapters.items())]:
        try:
            out[name] = svc.price_per_token(cid)
        except ApiError:
            out[name] = None     # an adapter not registered on chain, or the chain unreachable
    return out


async def node_info(request: web.Request) -> web.Response:
    """What a client needs to sign: the node's address and domain, prices, and (given ?requester=) its standing."""
    svc: NodeService = request.app["svc"]
    adapters = {i.name: i.identity for i in sorted(await svc.client.adapters(), key=lambda i: i.name)}
    info: dict[str, Any] = {
        "name": svc.name, "address": svc.node_address, "base_model": svc.base_model,
        "free_local_mode": svc.free_local_mode,
        "max_model_len": svc.client.info.max_model_len,
        "chain_id": svc.domain.chain_id if svc.domain else None,
        "settlement": svc.domain.verifying_contract if svc.domain else None,
        "price_per_token": await asyncio.to_thread(_prices, svc, adapters),
        "adapters": adapters,
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
    """Liveness: 503 {"status": "engine_dead"} once the engine loop stopped on an engine-wide error (it never
    recovers in-process: a supervisor must restart the node); else 200 {"status": "ok"}. The error's type only: its
    text is in the node's log."""
    svc: NodeService = request.app["svc"]
    dead = getattr(svc.client, "dead", None)
    if dead is not None:
        return web.json_response({"status": "engine_dead", "error": dead.split(":", 1)[0],
                                  "action": "restart the node (the engine cannot serve any request)"}, status=503)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    svc: NodeService = request.app["svc"]
    readiness = await asyncio.to_thread(svc.readiness)      # may read the chain: never on the event loop
    checks = {"model": svc.client.dead is None, **readiness}
    ready = all(v is True or v == "disabled" for v in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    svc: NodeService = request.app["svc"]
    counts = await asyncio.to_thread(svc.store.counts) if svc.store is not None else {}
    body = svc.metrics.render(svc.client.stats(), counts,
                              svc.settlement.metrics if svc.settlement is not None else {})
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def _admin(request: web.Request) -> NodeService:
    svc: NodeService = request.app["svc"]
    if svc.admin_token:
        import hmac
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                                   f"Bearer {svc.admin_token}".encode()):
            raise ApiError(401, "admin_token_required", "admin endpoints need 'Authorization: Bearer <admin_token>'")
    elif request.remote not in ("127.0.0.1", "::1"):
        raise ApiError(403, "admin_localhost_only", "admin endpoints are served to localhost only (no admin_token)")
    return svc


_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def _host_port(value: str, default_port: int) -> tuple[str, int] | None:
    """('host', port) of a Host header or an Origin's authority; None if malformed."""
    from urllib.parse import urlsplit
    try:
        parts = urlsplit("//" + value)
        host = parts.hostname
        port = parts.port or default_port
    except ValueError:
        return None
    if not host:
        return None
    return ("[" + host + "]" if ":" in host else host).lower(), port


@web.middleware
async def admin_guard_middleware(request: web.Request, handler):
    """For /admin/ only, before the token check: no browser page may drive the admin API. A foreign `Origin` is
    403 (CSRF); on a loopback socket the `Host` must be a loopback name or IP with this port, else 403 (a DNS
    rebinding page's Host is its own name); a POST must say `Content-Type: application/json`, else 415 (so a
    cross-site form or no-cors fetch, which cannot set it, is never a valid admin call)."""
    if not request.path.startswith("/admin/") and request.path != "/admin":
        return await handler(request)
    sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
    local_ip, port = (sock[0], sock[1]) if isinstance(sock, tuple) and len(sock) >= 2 else ("", 0)
    from openlora.node.config import is_loopback
    on_loopback = is_loopback(local_ip)
    allowed = {(n, port) for n in _LOOPBACK_NAMES}
    if local_ip:
        allowed.add(_host_port(local_ip if ":" not in local_ip else f"[{local_ip}]", port))
    origin = request.headers.get("Origin")
    if origin is not None:
        scheme, _, authority = origin.partition("://")
        hp = _host_port(authority, 443 if scheme == "https" else 80) if scheme in ("http", "https") else None
        own = _host_port(request.host, port) if not on_loopback else None
        if hp is None or not (hp in allowed or (own is not None and hp == own)):
            raise ApiError(403, "foreign_origin", f"admin endpoints refuse requests from web pages (Origin "
                                                  f"{origin[:100]!r}); call them from the command line")
    if on_loopback and _host_port(request.headers.get("Host", ""), 80) not in allowed:
        raise ApiError(403, "bad_host", f"Host {request.headers.get('Host', '')[:100]!r} is not this node's loopback "
                                        f"address (127.0.0.1:{port}, localhost:{port}); admin refused")
    if request.method == "POST" and request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "admin POST bodies must be sent as Content-Type: "
                                                      "application/json")
    return await handler(request)


async def admin_load(request: web.Request) -> web.Response:
    """{name, path}: a local directory is imported into the blockstore (checked as the engine checks it) and
    loaded under its CID; {name, cid}: an adapter fetched by CID. A failed load leaves `name` as it was."""
    from openlora.node.ipfs.errors import IpfsError
    svc = _admin(request)
    body = await _read_json(request)
    name, path, cid = body.get("name"), body.get("path"), body.get("cid")
    if not isinstance(name, str) or not name or not (isinstance(path, str) or isinstance(cid, str)) or \
            (path is not None and cid is not None):
        raise ApiError(400, "invalid_adapter", "give {name, path} or {name, cid} (one of path, cid)")
    if name == svc.base_model:
        raise ApiError(400, "invalid_adapter", f"{name!r} is the base model's name; choose another adapter name")
    client = svc.client
    _, prev = client.adapter_state(name)
    ref = cid
    try:
        if path is not None:
            # into the node's blockstore, checked as the engine checks it (no blockstore: tests, inference-only)
            cid = await asyncio.to_thread(svc.import_adapter, path) if svc.import_adapter else None
            ref = cid or path
        await client.load_adapter(name, ref, cid)
    except (AdapterError, IpfsError) as e:
        status, _ = client.adapter_state(name)
        if status != "unknown" and (prev is None or status == "failed"):
            try:
                await client.unregister_adapter(name)      # a failed load never leaves the name registered
            except AdapterError:
                pass
            if prev is not None:                           # the adapter that had this name keeps it
                await client.register_adapter(name, prev.ref, prev.identity)
                await client.pin_adapter(name, prev.pinned)
        raise ApiError(422, "invalid_adapter", str(e)) from None
    return web.json_response({"loaded": name, "cid": cid})


async def admin_unload(request: web.Request) -> web.Response:
    svc = _admin(request)
    name = request.match_info["name"]
    try:
        await svc.client.unregister_adapter(name)
    except AdapterError as e:
        raise ApiError(409 if "in use" in str(e) else 404, "unload_failed", str(e)) from None
    return web.json_response({"unloaded": name})


async def admin_pin(request: web.Request) -> web.Response:
    svc = _admin(request)
    body = await _read_json(request) if request.can_read_body else {}
    try:
        await svc.client.pin_adapter(request.match_info["name"], bool(body.get("pinned", True)))
    except AdapterError as e:
        raise ApiError(404, "unknown_adapter", str(e)) from None
    return web.json_response({"pinned": request.match_info["name"], "value": bool(body.get("pinned", True))})


def build_app(svc: NodeService, dashboard: Any = None) -> web.Application:
    """The node's app; `dashboard` (node.dashboard_data.Sources: chain, blockstore) feeds the web dashboard's chain
    views, which node/dashboard.py mounts under /dashboard/ and /v1/dashboard/ (its operator view works without)."""
    from openlora.node.dashboard import add_routes
    app = web.Application(middlewares=[errors_middleware, admin_guard_middleware], client_max_size=MAX_BODY)
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
    add_routes(app, svc, dashboard)
    return app
