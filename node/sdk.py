"""`OpenLoRAClient`: the Python SDK a dApp uses to sign requests, send them, stream tokens and fetch receipts.

    client = OpenLoRAClient("http://127.0.0.1:8000", private_key)
    out = client.completions(model="law", prompt="Hello", max_tokens=16)
    for chunk in client.completions(model="law", prompt="Hello", max_tokens=16, stream=True): ...
    client.receipt(out["openlora"]["request_id"])
    # with the official openai client: extra_body={"openlora": client.authorize(body)}

What it does: reads the node's domain and prices from GET /v1/node, signs the EIP-712 Request (prompt hash over the
exact body sent) and a cumulative Voucher whose cap is what this node has charged the requester so far plus this
request's maxPrice, and speaks the OpenAI wire format over plain HTTP (stdlib only: usable without aiohttp).
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


class OpenLoRAError(Exception):
    """The node refused or failed a request: `status`, `code` and the node's sentence."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class OpenLoRAClient:
    def __init__(self, base_url: str, private_key: str | bytes | None = None, timeout: float = 120.0,
                 deadline_s: int = 300):
        self.base_url = base_url.rstrip("/")
        self.account = Account.from_key(private_key) if private_key is not None else None
        self.timeout, self.deadline_s = timeout, deadline_s
        self._info: dict | None = None

    # ---- HTTP ----
    def _request(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())["error"]
                raise OpenLoRAError(e.code, err.get("code", "error"), err.get("message", "")) from None
            except (ValueError, KeyError, TypeError):
                raise OpenLoRAError(e.code, "http_error", str(e)) from None
        except urllib.error.URLError as e:
            raise OpenLoRAError(0, "unreachable", f"cannot reach {self.base_url}: {e.reason}") from None

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        with self._request(method, path, body) as r:
            return json.loads(r.read())

    def node_info(self, refresh: bool = False) -> dict:
        if self._info is None or refresh:
            self._info = self._json("GET", "/v1/node")
        return self._info

    # ---- signing ----
    def authorize(self, body: dict, max_price: int | None = None) -> dict:
        """The `openlora` object for `body` (sign it last: the prompt hash covers the body's prompt and params)."""
        if self.account is None:
            raise OpenLoRAError(0, "no_key", "this client has no private key: pass one to sign requests")
        info = self.node_info()
        if info.get("chain_id") is None:
            raise OpenLoRAError(0, "no_chain", "the node has no chain configured: it cannot take signed requests")
        me = self.account.address
        standing = self._json("GET", f"/v1/node?requester={me}").get("requester", {})
        model = body.get("model")
        cid = info["adapters"].get(model, model if model != info["base_model"] else None)
        if max_price is None:
            max_price = int(info["price_per_token"].get(model, 0)) * int(info["max_model_len"])
        domain = eip712.Domain(chain_id=info["chain_id"], verifying_contract=info["settlement"])
        req = eip712.Request(
            requester=me, node=info["address"], adapter=eip712.adapter_id(cid) if cid else bytes(32),
            promptHash=eip712.prompt_hash(body_prompt(body), signed_params(body)),
            maxTokens=int(body.get("max_completion_tokens", body.get("max_tokens", 16))), maxPrice=max_price,
            nonce=int(time.time() * 1e6) * 1000 + secrets.randbelow(1000), deadline=int(time.time()) + self.deadline_s)
        cap = int(standing.get("debited", 0)) + int(standing.get("pending", 0)) + max_price
        voucher = eip712.Voucher(requester=me, node=info["address"], cumulativeCap=cap)
        key = self.account.key
        return {"requester": me, "node": info["address"], "adapter": "0x" + req.adapter.hex(),
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
                chunk = json.loads(data)
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
