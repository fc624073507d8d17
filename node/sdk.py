"""`OpenLoRAClient`: the Python SDK a dApp uses to sign requests, send them, stream tokens and fetch receipts.

    client = OpenLoRAClient("http://127.0.0.1:8000", private_key)
    out = client.completions(model="law", prompt="Hello", max_tokens=16)
    for chunk in client.completions(model="law", prompt="Hello", max_tokens=16, stream=True): ...
    client.receipt(out["openlora"]["request_id"])
    # with the official openai client: extra_body={"openlora": client.authorize(body)}

What it does: reads the node's domain and prices from GET /v1/node, signs the EIP-712 Request (prompt hash over the
exact body sent) and a cumulative Voucher, and speaks the OpenAI wire format over plain HTTP (stdlib only: usable
without aiohttp). The voucher's cap is what this node has charged so far plus this request's maxPrice, where "so
far" is never more than the SDK's own bound: the highest cap it signed on this lane (node/sdk_ledger.py, a file
under `ledger_dir`) or what the Settlement contract says is debited (read through `rpc_url`), whichever is larger.
A node that reports more, or quotes prices above the user's `SpendLimits`, gets an OpenLoRAError and no signature.
What it does not do: deposit funds (use the Settlement contract's `deposit(node, amount)`), or retry on its own.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from eth_account import Account

from openlora.attribution import eip712
from openlora.node.auth import body_prompt, signed_params
from openlora.node.sdk_ledger import (MAX_MODEL_LEN, Lane, SpendLimits, SpendRefused, VoucherLedger, chain_id_of,
                                      read_debited)
from openlora.safejson import loads as safe_loads

MAX_RESPONSE = 64 << 20  # bytes of one node response (JSON) this client parses; deeper than 64 levels is refused


class OpenLoRAError(Exception):
    """The node refused or failed a request: `status`, `code` and the node's sentence."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class OpenLoRAClient:
    def __init__(self, base_url: str, private_key: str | bytes | None = None, timeout: float = 120.0,
                 deadline_s: int = 300, *, rpc_url: str | None = None, ledger_dir: str | None = None,
                 limits: SpendLimits | None = None, settlement: str | None = None):
        """`rpc_url`: a chain RPC the SDK trusts (it reads Settlement.debited and the chain id there; without it
        only the local ledger bounds the cap). `ledger_dir`: where the per-lane record of signed caps lives
        (default $OPENLORA_SDK_DIR, else ~/.openlora/sdk). `limits`: price and spend caps. `settlement`: the
        Settlement contract address to accept (else whatever the node names; a voucher only works there)."""
        self.base_url = base_url.rstrip("/")
        self.account = Account.from_key(private_key) if private_key is not None else None
        self.timeout, self.deadline_s = timeout, deadline_s
        self.rpc_url, self.ledger = rpc_url, VoucherLedger(ledger_dir)
        self.limits = limits or SpendLimits()
        self.settlement = settlement
        self._info: dict | None = None
        self._chain_checked: int | None = None

    # ---- HTTP ----
    def _request(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            try:
                err = safe_loads(e.read(MAX_RESPONSE + 1), max_bytes=MAX_RESPONSE)["error"]
                raise OpenLoRAError(e.code, err.get("code", "error"), err.get("message", "")) from None
            except (ValueError, KeyError, TypeError):
                raise OpenLoRAError(e.code, "http_error", str(e)) from None
        except urllib.error.URLError as e:
            raise OpenLoRAError(0, "unreachable", f"cannot reach {self.base_url}: {e.reason}") from None

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        with self._request(method, path, body) as r:
            return safe_loads(r.read(MAX_RESPONSE + 1), max_bytes=MAX_RESPONSE)  # a node is not trusted

    def node_info(self, refresh: bool = False) -> dict:
        if self._info is None or refresh:
            self._info = self._json("GET", "/v1/node")
        return self._info

    # ---- signing ----
    def _refuse(self, message: str):
        return OpenLoRAError(0, "spend_refused", message)

    def _domain(self, info: dict) -> eip712.Domain:
        from eth_utils import is_address, to_checksum_address
        if not is_address(info.get("settlement") or "") or not is_address(info.get("address") or ""):
            raise self._refuse("the node's /v1/node names no valid settlement contract or node address")
        contract = to_checksum_address(info["settlement"])
        if self.settlement is not None and contract != to_checksum_address(self.settlement):
            raise self._refuse(f"the node settles on {contract}, not the Settlement contract {self.settlement} "
                               f"this client was given; nothing was signed")
        if self.rpc_url is not None and self._chain_checked != info["chain_id"]:
            try:
                real = chain_id_of(self.rpc_url)
            except SpendRefused as e:
                raise self._refuse(str(e)) from None
            if real != info["chain_id"]:
                raise self._refuse(f"the node says chain {info['chain_id']}, the RPC given to the SDK is chain "
                                   f"{real}; nothing was signed")
            self._chain_checked = real
        return eip712.Domain(chain_id=int(info["chain_id"]), verifying_contract=contract)

    def _max_price(self, info: dict, model: Any, max_price: int | None) -> int:
        """This request's maxPrice, checked against the user's limits (the node's quotes are only quotes)."""
        lim = self.limits
        quoted = info.get("price_per_token", {}).get(model)
        try:
            price, max_len = int(quoted if quoted is not None else 0), int(info["max_model_len"])
        except (TypeError, ValueError, KeyError):
            raise self._refuse(f"the node quotes no usable price / max_model_len for {model!r}") from None
        if price < 0 or not 0 < max_len <= MAX_MODEL_LEN:
            raise self._refuse(f"the node quotes price {price} and max_model_len {max_len}: out of range "
                               f"(max_model_len is at most {MAX_MODEL_LEN}); nothing was signed")
        if lim.max_price_per_token is not None and price > lim.max_price_per_token:
            raise self._refuse(f"the node prices {model!r} at {price} wei/token, above your max_price_per_token "
                               f"{lim.max_price_per_token}; nothing was signed")
        if max_price is None:
            max_price = price * max_len
            if lim.max_spend_per_request is not None:
                max_price = min(max_price, lim.max_spend_per_request)
        if max_price < 0:
            raise self._refuse(f"max_price {max_price} is negative")
        if lim.max_spend_per_request is not None and max_price > lim.max_spend_per_request:
            raise self._refuse(f"this request may cost up to {max_price} wei, above your max_spend_per_request "
                               f"{lim.max_spend_per_request}; nothing was signed")
        return max_price

    def _cap(self, lane: Lane, standing: dict, max_price: int) -> int:
        """The voucher cap: what the node may have charged so far (its report, bounded by the SDK's own ledger
        and the chain) plus this request's maxPrice. Raises OpenLoRAError when the node asks for more."""
        try:
            reported = int(standing.get("debited", 0) or 0) + int(standing.get("pending", 0) or 0)  # + reservations
        except (TypeError, ValueError):
            raise self._refuse(f"the node reported a malformed standing {standing!r}") from None
        try:
            signed = self.ledger.read(lane).cap
            debited = (read_debited(self.rpc_url, lane.settlement, lane.requester, lane.node)
                       if self.rpc_url is not None else 0)
        except SpendRefused as e:
            raise self._refuse(str(e)) from None
        bound = max(signed, debited)
        if reported > bound:
            raise self._refuse(
                f"the node reports {reported} wei charged to you (debited + pending), but the most it can honestly "
                f"have charged is {bound} wei (highest voucher cap this SDK signed on this lane: {signed}"
                + (f"; debited on chain: {debited}" if self.rpc_url is not None else "; no rpc_url given, so the "
                   "chain was not read") + f"; ledger {self.ledger.path(lane)}). Nothing was signed.")
        cap = max(reported, debited) + max_price
        if self.limits.budget is not None and cap > self.limits.budget:
            raise self._refuse(f"signing would let this node take up to {cap} wei in total from this lane, above "
                               f"your budget {self.limits.budget}; nothing was signed")
        return cap

    def authorize(self, body: dict, max_price: int | None = None) -> dict:
        """The `openlora` object for `body` (sign it last: the prompt hash covers the body's prompt and params)."""
        if self.account is None:
            raise OpenLoRAError(0, "no_key", "this client has no private key: pass one to sign requests")
        info = self.node_info()
        if info.get("chain_id") is None:
            raise OpenLoRAError(0, "no_chain", "the node has no chain configured: it cannot take signed requests")
        me = self.account.address
        domain = self._domain(info)
        standing = self._json("GET", f"/v1/node?requester={me}").get("requester", {})
        model = body.get("model")
        cid = info["adapters"].get(model, model if model != info["base_model"] else None)
        max_price = self._max_price(info, model, max_price)
        req = eip712.Request(
            requester=me, node=info["address"], adapter=eip712.adapter_id(cid) if cid else bytes(32),
            promptHash=eip712.prompt_hash(body_prompt(body), signed_params(body)),
            maxTokens=int(body.get("max_completion_tokens", body.get("max_tokens", 16))), maxPrice=max_price,
            nonce=int(time.time() * 1e6) * 1000 + secrets.randbelow(1000), deadline=int(time.time()) + self.deadline_s)
        lane = Lane(domain.chain_id, domain.verifying_contract, req.node, me)
        cap = self._cap(lane, standing, max_price)
        try:
            self.ledger.record(lane, cap, max_price)      # written before anything is signed
        except (OSError, SpendRefused) as e:
            raise self._refuse(f"cannot record the voucher in the SDK's ledger ({e}); nothing was signed") from None
        voucher = eip712.Voucher(requester=me, node=req.node, cumulativeCap=cap)
        key = self.account.key
        return {"requester": me, "node": req.node, "adapter": "0x" + req.adapter.hex(),
                "promptHash": "0x" + req.promptHash.hex(), "maxTokens": req.maxTokens, "maxPrice": str(max_price),
                "nonce": str(req.nonce), "deadline": req.deadline, "chainId": domain.chain_id,
                "verifyingContract": domain.verifying_contract,
                "signature": "0x" + eip712.sign(req, domain, key).hex(),
                "voucher": {"cumulativeCap": str(cap), "signature": "0x" + eip712.sign(voucher, domain, key).hex()}}

    # ---- calls ----
    def _call(self, path: str, body: dict, sign: bool, max_price: int | None):
        body = {k: v for k, v in body.items() if v is not None}
        if sign:
            body["openlora"] = self.authorize(body, max_price)
        if not body.get("stream"):
            return self._json("POST", path, body)
        return self._stream(path, body)

    def _stream(self, path: str, body: dict) -> Iterator[dict]:
        with self._request("POST", path, body) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    return
                chunk = safe_loads(data, max_bytes=MAX_RESPONSE)
                if "error" in chunk:
                    err = chunk["error"]
                    raise OpenLoRAError(500, err.get("code", "error"), err.get("message", ""))
                yield chunk

    def completions(self, model: str, prompt: str | list[int], max_tokens: int = 16, temperature: float | None = None,
                    stream: bool = False, sign: bool = True, max_price: int | None = None, **params: Any):
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
                **({"stream": True} if stream else {}), **params}
        return self._call("/v1/completions", body, sign, max_price)

    def chat(self, model: str, messages: list[dict], max_tokens: int = 256, temperature: float | None = None,
             stream: bool = False, sign: bool = True, max_price: int | None = None, **params: Any):
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                **({"stream": True} if stream else {}), **params}
        return self._call("/v1/chat/completions", body, sign, max_price)

    def receipt(self, request_id: str) -> dict:
        return self._json("GET", f"/v1/receipts/{request_id}")
