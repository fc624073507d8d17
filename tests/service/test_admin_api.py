"""Admin endpoints through the real aiohttp app on loopback (issue 14 items 10 and 11): no web page can drive them
(foreign Origin 403, DNS-rebinding Host 403, non-JSON POST 415), an off-loopback bind needs a token (config
error), `{name, path}` imports and validates a local directory before loading it under its CID, `{name, cid}`
loads by CID, and a failed load leaves the name as it was."""

from __future__ import annotations

import http.client
import json
import os
import shutil

import pytest

from openlora.inference import EngineConfig, LLMEngine
from openlora.inference.client import AsyncEngine
from openlora.node.api import NodeService, build_app
from openlora.node.config import DEFAULT_CONFIG_TOML, parse_config
from openlora.node.errors import ConfigError
from openlora.node.ipfs.adapters import AdapterStore, engine_validator
from openlora.node.ipfs.source import IpfsAdapterSource
from tests.service.server_util import ServerThread

TOKEN = "s3cret-admin-token-0123456789"


@pytest.fixture(scope="module")
def node(tiny, tmp_path_factory):
    home = tmp_path_factory.mktemp("admin")
    model = tiny.model("llama")
    store = AdapterStore(home / "ipfs")
    engine = LLMEngine(EngineConfig(model=str(model), dtype="float32", device="cpu"), IpfsAdapterSource(store, []))
    client = AsyncEngine(engine)
    validate = engine_validator(engine.spec, max_rank=engine.adapters.max_rank, max_bytes=engine.adapters.max_bytes)
    svc = NodeService(client=client, node_address="0x" + "11" * 20, free_local_mode=True,
                      import_adapter=lambda path: str(store.add(path, validate=validate)[0]))
    with ServerThread(build_app(svc)) as server:
        yield {"svc": svc, "server": server, "store": store, "model": model, "home": home, "engine": engine}
    client.shutdown()


def call(server, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
    """One request with exactly these headers (Host defaults to the loopback address and port)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    h = {"Host": f"127.0.0.1:{server.port}"}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in h.items():
        if v is not None:
            conn.putheader(k, v)
    conn.putheader("Content-Length", str(len(data or b"")))
    conn.endheaders(data)
    r = conn.getresponse()
    raw = r.read()
    try:
        out = r.status, json.loads(raw or b"{}")
    except ValueError:
        out = r.status, {"raw": raw.decode(errors="replace")}
    conn.close()
    return out


def registered(node) -> set[str]:
    return {i.name for i in node["engine"].adapters.list()}


def catalog(node) -> dict[str, str | None]:
    """What the node serves: name -> CID, from the engine's adapter manager (the node's one adapter registry)."""
    return {i.name: i.identity for i in node["engine"].adapters.list()}


@pytest.fixture
def adapter(tiny, tmp_path):
    d = tmp_path / "adapter"
    shutil.copytree(tiny.adapter(tiny.model("llama"), rank=4, seed=5), d)
    return d


def test_browser_pages_cannot_drive_admin(node, adapter):
    s = node["server"]
    load = {"name": "evil", "path": str(adapter)}
    for origin in ("http://evil.example", "https://127.0.0.1.evil.example", "null",
                   f"http://127.0.0.1:{s.port + 1}"):
        status, js = call(s, "POST", "/admin/adapters", load, {"Origin": origin})
        assert (status, js["error"]["code"]) == (403, "foreign_origin"), origin
    status, js = call(s, "POST", "/admin/adapters", load, {"Host": f"rebound.evil.example:{s.port}"})
    assert (status, js["error"]["code"]) == (403, "bad_host")
    status, js = call(s, "POST", "/admin/adapters", load, {"Host": None})
    assert status in (400, 403)                          # aiohttp itself refuses an HTTP/1.1 request without Host
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        status, js = call(s, "POST", "/admin/adapters", load, {"Content-Type": ctype})
        assert (status, js["error"]["code"]) == (415, "unsupported_media_type"), ctype
    status, js = call(s, "DELETE", "/admin/adapters/law", None, {"Origin": "http://evil.example"})
    assert status == 403
    status, js = call(s, "POST", "/admin/adapters/law/pin", b"", {"Origin": "http://evil.example"})
    assert status == 403
    assert "evil" not in registered(node) and "evil" not in catalog(node)
    # the node's own loopback origins and names are fine
    status, js = call(s, "POST", "/admin/adapters/nothing/pin", {"pinned": True},
                      {"Origin": f"http://localhost:{s.port}", "Host": f"localhost:{s.port}"})
    assert (status, js["error"]["code"]) == (404, "unknown_adapter")
    # non-admin routes are not affected (a browser may read /v1/models)
    status, _ = call(s, "GET", "/v1/models", None, {"Origin": "http://evil.example", "Host": "x.example"})
    assert status == 200


def test_path_load_imports_validates_and_serves_under_its_cid(node, adapter):
    s, store = node["server"], node["store"]
    status, js = call(s, "POST", "/admin/adapters", {"name": "law", "path": str(adapter)})
    assert status == 200, js
    cid = js["cid"]
    assert cid.startswith("bafy") and cid in store.list() and catalog(node)["law"] == cid
    assert node["engine"].adapters.status("law") == "ready"
    status, models = call(s, "GET", "/v1/models")
    assert {"law"} <= {m["id"] for m in models["data"]}
    status, out = call(s, "POST", "/v1/completions", {"model": "law", "prompt": [5, 6, 7], "max_tokens": 3,
                                                     "temperature": 0.0})
    assert status == 200 and out["usage"]["completion_tokens"] <= 3
    # {name, cid}: the same adapter by CID under another name
    status, js = call(s, "POST", "/admin/adapters", {"name": "law-by-cid", "cid": cid})
    assert (status, js) == (200, {"loaded": "law-by-cid", "cid": cid})
    assert call(s, "DELETE", "/admin/adapters/law-by-cid")[0] == 200


def test_bad_loads_leave_nothing_registered(node, adapter, tmp_path):
    s, store = node["server"], node["store"]
    before = set(store.list())
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    status, js = call(s, "POST", "/admin/adapters", {"name": "dora", "path": str(adapter)})
    assert status == 422 and "use_dora" in js["error"]["message"]
    status, js = call(s, "POST", "/admin/adapters", {"name": "etc", "path": "/etc"})
    assert status == 422 and "adapter_config.json is missing" in js["error"]["message"]
    assert "is not a CID" not in js["error"]["message"]
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.safetensors").symlink_to("/etc/hostname")
    status, js = call(s, "POST", "/admin/adapters", {"name": "leak", "path": str(adapter)})
    assert status == 422 and "symbolic link" in js["error"]["message"]
    status, js = call(s, "POST", "/admin/adapters", {"name": "nocid", "cid": "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"})
    assert status == 422
    assert not {"dora", "etc", "leak", "nocid"} & (registered(node) | set(catalog(node)))
    assert set(store.list()) == before


def test_failed_reload_keeps_the_adapter_that_had_the_name(node, adapter, tmp_path):
    s = node["server"]
    status, js = call(s, "POST", "/admin/adapters", {"name": "keep", "path": str(adapter)})
    assert status == 200
    good = js["cid"]
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "bias": "all"}))
    status, js = call(s, "POST", "/admin/adapters", {"name": "keep", "path": str(bad)})
    assert status == 422 and "bias" in js["error"]["message"]
    assert catalog(node)["keep"] == good and "keep" in registered(node)
    status, out = call(s, "POST", "/v1/completions", {"model": "keep", "prompt": [5, 6], "max_tokens": 2})
    assert status == 200


def test_admin_token_is_checked_in_constant_time_and_required_off_loopback(node, adapter):
    svc, s = node["svc"], node["server"]
    svc.admin_token = TOKEN
    try:
        status, js = call(s, "POST", "/admin/adapters/x/pin", {"pinned": True})
        assert (status, js["error"]["code"]) == (401, "admin_token_required")
        status, js = call(s, "POST", "/admin/adapters/x/pin", {"pinned": True}, {"Authorization": f"Bearer {TOKEN}"})
        assert (status, js["error"]["code"]) == (404, "unknown_adapter")
        # a token does not let a web page in either
        status, js = call(s, "POST", "/admin/adapters/x/pin", {"pinned": True},
                          {"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"})
        assert status == 403
    finally:
        svc.admin_token = ""


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "node.example.com"])
def test_config_refuses_off_loopback_api_without_admin_token(host, tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config(DEFAULT_CONFIG_TOML, tmp_path, environ={"OPENLORA_API_HOST": host})
    assert "api.admin_token is required" in str(e.value) and "\n" not in str(e.value)
    cfg = parse_config(DEFAULT_CONFIG_TOML, tmp_path, environ={"OPENLORA_API_HOST": host,
                                                               "OPENLORA_API_ADMIN_TOKEN": TOKEN})
    assert cfg.api.host == host
    for loop in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        assert parse_config(DEFAULT_CONFIG_TOML, tmp_path, environ={"OPENLORA_API_HOST": loop}).api.host == loop


def test_start_refuses_off_loopback_without_token_in_one_line(tmp_path):
    import subprocess
    import sys
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLORA_")}
    home = tmp_path / "home"
    r = subprocess.run([sys.executable, "-m", "openlora.node.cli", "--home", str(home), "init", "--password-file",
                        str(pw)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "openlora.node.cli", "--home", str(home), "start", "--password-file",
                        str(pw)], capture_output=True, text=True, env={**env, "OPENLORA_API_HOST": "0.0.0.0"},
                       timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: api.host = '0.0.0.0' listens beyond this machine, so api.admin_token is required (set a long random "
        "token, or bind 127.0.0.1)"]
