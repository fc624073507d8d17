"""Every body field that changes the output is signed (issue 14, item 12): `max_completion_tokens` is in the prompt
hash, so a relay that changes it gets prompt_mismatch; NaN/Infinity in a signed field is a 400, never a 500.
The end-to-end case runs on test_signed_requests' real Anvil node (its fixtures, one more chain for this module)."""

from __future__ import annotations

import copy
import json
import math

import pytest

from openlora.attribution import eip712
from openlora.devnet.seed import ROLES
from openlora.node.auth import SIGNED_PARAMS, body_prompt, signed_params
from openlora.node.sdk import OpenLoRAClient
from tests.service.test_signed_requests import env, post, sdk_ledger_dir  # noqa: F401  (pytest fixtures)

OUTPUT_FIELDS = ("model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                 "logprobs", "top_logprobs", "n", "stream", "ignore_eos")


def test_every_field_that_changes_the_output_is_signed():
    assert set(OUTPUT_FIELDS) <= set(SIGNED_PARAMS)
    body = {"model": "law", "prompt": "hi", "max_tokens": 16, "max_completion_tokens": 4}
    h = eip712.prompt_hash(body_prompt(body), signed_params(body))
    assert h != eip712.prompt_hash(body_prompt(body), signed_params({**body, "max_completion_tokens": 5}))
    assert h != eip712.prompt_hash(body_prompt(body), signed_params({k: v for k, v in body.items()
                                                                     if k != "max_completion_tokens"}))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_prompt_hash_refuses_non_finite_numbers_with_a_value_error(value):
    for params in ({"temperature": value}, {"stop": [value]}, {"top_p": {"x": value}}):
        with pytest.raises(ValueError):
            eip712.prompt_hash("hi", params)
    with pytest.raises(ValueError):
        eip712.prompt_hash([1, value], {})


def test_max_completion_tokens_is_signed_and_nan_is_a_400_end_to_end(env):
    url = env["server"].url + "/v1/completions"
    sdk = OpenLoRAClient(env["server"].url, env["accts"][ROLES["requester"]].key)
    body = {"model": "law", "prompt": [5, 6, 7], "max_completion_tokens": 3, "temperature": 0.0, "ignore_eos": True}
    # the SDK signs max_completion_tokens, and the node serves exactly that many tokens
    auth = sdk.authorize(copy.deepcopy(body))
    assert auth["promptHash"] == "0x" + eip712.prompt_hash(body_prompt(body), signed_params(body)).hex()
    status, js = post(url, {**body, "openlora": auth})
    assert status == 200 and js["usage"]["completion_tokens"] == 3, js
    # a relay lowering (or raising) it breaks the signature: prompt_mismatch, nothing served
    for tampered in (1, 2):
        auth = sdk.authorize(copy.deepcopy(body))
        status, js = post(url, {**body, "max_completion_tokens": tampered, "openlora": auth})
        assert (status, js["error"]["code"]) == (400, "prompt_mismatch"), js
    # adding it to a body signed without it is tampering too
    plain = {k: v for k, v in body.items() if k != "max_completion_tokens"}
    auth = sdk.authorize(copy.deepcopy(plain))
    status, js = post(url, {**plain, "max_completion_tokens": 1, "openlora": auth})
    assert (status, js["error"]["code"]) == (400, "prompt_mismatch"), js
    # NaN / Infinity in a signed field: a 400, never a 500 (raw JSON: json.dumps would write the same tokens)
    auth = sdk.authorize(copy.deepcopy(body))
    for field in ("temperature", "top_p", "seed", "max_completion_tokens"):
        for raw in ("NaN", "Infinity", "-Infinity"):
            signed = {**body, "openlora": auth}
            text = json.dumps({**signed, field: "@@"}).replace('"@@"', raw)
            status, js = post(url, text.encode())
            assert status == 400 and js["error"]["code"] in ("invalid_json", "invalid_parameter", "invalid_auth"), \
                (field, raw, js)
    # and the node still serves (the NaN attempts did not use the nonce: the same authorisation is served now)
    status, js = post(url, {**body, "openlora": auth})
    assert status == 200 and js["usage"]["completion_tokens"] == 3, js
