"""The web dashboard in a real browser (Playwright + Debian Chromium) against a node whose receipts settled on a real
Anvil (tests/web/conftest.py): the contributor view shows exactly what `openlora-node payouts --json` says for
three addresses, and a browser wallet (EIP-1193) claims on chain; a curator sees the pending contribution and its
duplicate flags; the operator view updates while requests run; no page logs a console error. The JSON endpoints
refuse bad input with a 4xx (never a 5xx), and amounts far beyond 2^53 format exactly in the page's own code."""

from __future__ import annotations

import json
import re
import threading
import time
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from openlora.devnet.seed import ROLES
from tests.service.server_util import http_json
from tests.web.conftest import screenshot


def payouts_cli(web, address: str) -> dict:
    from openlora.node.cli import cli
    out = CliRunner().invoke(cli, ["--home", str(web["home"]), "payouts", "--address", address, "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def exact(wei: str, decimals: int, symbol: str) -> str:
    """What the page must print for `wei`: every non-zero decimal, thousands grouped (Python integers, not JS)."""
    whole, frac = divmod(int(wei), 10**decimals)
    frac_s = str(frac).rjust(decimals, "0").rstrip("0") if decimals else ""
    return f"{whole:,}" + (f".{frac_s}" if frac_s else "") + f" {symbol}"


def wait_for(cond, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_contributor_view_shows_what_payouts_json_says(web, page):
    url = web["server"].url
    token = web["dep"].contract(web["w3"], "OpenLoRAToken")
    symbol, decimals = token.functions.symbol().call(), token.functions.decimals().call()
    addresses = [web["contributor"], web["author"], web["node"]]
    for who in addresses:
        cli = payouts_cli(web, who)
        page.goto(f"{url}/dashboard/#/contributor/{who}")
        page.wait_for_selector("#who")
        assert page.inner_text("#who") == who
        for field in ("settled", "claimed", "claimable"):
            el = page.locator(f".cards [data-field={field}]")
            assert el.get_attribute("data-wei") == cli[field], (who, field)
            assert el.inner_text() == exact(cli[field], decimals, symbol), (who, field)
        assert page.locator(".cards [data-field=unsettled]").get_attribute("data-wei") == cli["unsettled_local"]
        rows = page.locator("#batches tbody tr[data-batch]")
        assert rows.count() == len(cli["batches"]) == 2
        shown = {rows.nth(i).get_attribute("data-batch"): rows.nth(i).locator("[data-field=batch-amount]")
                 .get_attribute("data-wei") for i in range(rows.count())}
        assert shown == {b["batch_id"]: b["amount"] for b in cli["batches"]}
        # the JSON behind the view: the CLI's per-adapter, per-role and per-Datanet / per-contribution split
        status, js = http_json(f"{url}/v1/dashboard/contributors/{who.lower()}")
        assert status == 200 and js["address"] == who
        assert js["by_adapter"] == cli["by_adapter"] and js["gross"] == cli["gross"]
        assert {str(d["datanet_id"]) if d["datanet_id"] is not None else "unknown":
                {"span": d["matched"], "static": d["static"],
                 "contributions": {str(c["id"]) if c["id"] is not None else "unknown":
                                   (c["matched"], c["static"], c["receipts"]) for c in d["contributions"]}}
                for d in js["by_datanet"]} == \
            {k: {"span": v["span"], "static": v["static"],
                 "contributions": {c: (cv["span"], cv["static"], len(cv["receipts"]))
                                   for c, cv in v["contributions"].items()}} for k, v in cli["by_datanet"].items()}
        settled_rows = [r for r in js["receipts"] if r["status"] != "unsettled"]
        assert {r["request_id"]: r["share"] for r in settled_rows} == \
            {r["request_id"]: r["gross"] for r in cli["receipts"] if int(r["gross"])}
        assert js["receipts_total"] == len(js["receipts"])
        shown = page.locator("#by-datanet tr.datanet")
        assert shown.count() == len(cli["by_datanet"])
        for i, d in enumerate(js["by_datanet"]):
            assert shown.nth(i).locator("[data-field=static]").get_attribute("data-wei") == d["static"]
            assert shown.nth(i).locator("[data-field=matched]").get_attribute("data-wei") == d["matched"]
        # no wallet in this browser: the exact CLI command
        if int(cli["claimable"]):
            assert page.inner_text("#claim-command") == f"openlora-node claim --address {who}"
            assert page.locator("#claim-wallet").count() == 0
        else:
            assert page.locator("#claim-none").count() == 1
        if who == web["contributor"]:
            assert int(cli["claimed"]) > 0 and int(cli["claimable"]) > 0 and int(cli["unsettled_local"]) > 0
            assert page.locator("svg[data-chart=amount] circle").count() == 2
            # span evidence: the contributor's earnings came through matched spans, highlighted in the completions
            mine = {c["id"] for c in web["extra"]["contributions"] if c["contributor"] == who}
            d1 = next(d for d in js["by_datanet"] if d["datanet_id"] == web["extra"]["datanet_id"])
            assert int(d1["matched"]) > 0 and {c["id"] for c in d1["contributions"]} <= mine
            marks = page.locator("#receipts mark")
            assert marks.count() > 0
            assert {int(marks.nth(i).get_attribute("data-contribution")) for i in range(marks.count())} <= \
                {c["id"] for c in web["extra"]["contributions"]}
            rows_with_spans = [r for r in js["receipts"] if r["spans"]]
            assert rows_with_spans and all(r["segments"] for r in rows_with_spans)
            text = "".join(seg["text"] for seg in rows_with_spans[0]["segments"])
            ids = rows_with_spans[0]["completion_ids"]
            tok = web["llm"].engine.tokenizer
            assert ids and text == "".join(tok.decode([t]) for t in ids)
            screenshot(page, "contributor")
        if who == web["node"]:
            assert int(js["gross"]["operator"]) > 0
            assert page.inner_text("#by-role").count("as node operator") == 1


def test_a_bad_address_in_the_page_is_one_clear_line(web, page):
    page.goto(f"{web['server'].url}/dashboard/#/contributor/0x12345")
    assert "not an address" in page.wait_for_selector(".error[data-code=invalid_address]").inner_text()
    page.fill("#address", web["author"])
    page.click("form.address-form button")
    page.wait_for_selector("#who")
    assert page.inner_text("#who") == web["author"]


def test_browser_wallet_claims_on_chain(web, page):
    """An EIP-1193 provider in the page (forwarding to Anvil, whose dev accounts are unlocked) sends the claim the
    view built; the author is paid exactly its claimable amount, and the view then shows nothing to claim."""
    from openlora.attribution.payouts import payouts_of
    w3, dep, author = web["w3"], web["dep"], web["author"]
    sender = web["accts"][ROLES["requester2"]].address
    before = payouts_of(w3, dep, author, from_block=dep.block).claimable
    assert before > 0
    balance = dep.contract(w3, "OpenLoRAToken").functions.balanceOf(author).call()
    calls = []

    def rpc(method, params):
        calls.append(method)
        if method in ("eth_requestAccounts", "eth_accounts"):
            return [sender]
        r = w3.provider.make_request(method, params or [])
        if "error" in r:
            raise RuntimeError(r["error"]["message"])
        return r["result"]
    page.expose_function("anvilRequest", rpc)
    page.add_init_script("window.ethereum = {isMetaMask: false, request: ({method, params}) => "
                         "window.anvilRequest(method, params || [])};")
    page.goto(f"{web['server'].url}/dashboard/#/contributor/{author}")
    page.click("#claim-wallet")
    tx = page.wait_for_selector("#claim-tx").inner_text().removeprefix("sent: ")
    assert calls[-1] == "eth_sendTransaction"
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    assert receipt.status == 1 and receipt["from"] == sender
    assert dep.contract(w3, "OpenLoRAToken").functions.balanceOf(author).call() == balance + before
    assert payouts_of(w3, dep, author, from_block=dep.block).claimable == 0

    def claimed_shown():
        page.goto(f"{web['server'].url}/dashboard/?r={time.monotonic()}#/contributor/{author}")
        page.wait_for_selector("#who")
        return page.locator(".cards [data-field=claimable]").get_attribute("data-wei") == "0"
    wait_for(claimed_shown, 15, "the view to show the claim")
    assert page.locator("#claim-none").count() == 1


def test_curator_sees_the_pending_contribution_with_its_duplicates(web, page):
    url, extra = web["server"].url, web["extra"]
    page.goto(f"{url}/dashboard/#/curator")
    page.wait_for_selector("#datanets tbody tr[data-datanet]")
    page.click(f"#datanets a[href='#/curator/{extra['datanet_id']}']")
    row = page.wait_for_selector(f"#pending tr.pending[data-contribution='{web['pending_id']}']")
    assert "FLAGGED: 2 exact, 0 near duplicate row(s)" in row.inner_text()
    statuses = {int(r.get_attribute("data-contribution")): r.get_attribute("data-status")
                for r in page.query_selector_all("#contributions tbody tr[data-contribution]")}
    want = {c["id"]: c["status"] for c in extra["contributions"]} | {web["pending_id"]: "pending",
                                                                     web["unheld_id"]: "pending"}
    unheld = page.query_selector(f"#pending tr.pending[data-contribution='{web['unheld_id']}']")
    assert "not readable here" in unheld.inner_text()
    assert statuses == want
    v = page.query_selector("#versions tr[data-version='1']")
    assert extra["datanet_version"]["manifest_cid"][:16] in v.inner_text()
    # usage: the adapter built on the Datanet, and the 9 of the 14 requests so far that used it (i % 3 != 0)
    usage = page.query_selector(f"#usage tr[data-adapter='{web['cid']}']")
    assert usage.query_selector_all("td")[4].inner_text() == "9"
    status, js = http_json(f"{url}/v1/dashboard/datanets/{extra['datanet_id']}")
    a = next(a for a in js["usage"]["adapters"] if a["cid"] == web["cid"])
    assert status == 200 and a["requests"] == 9 and a["author"] == web["author"]
    screenshot(page, "curator")


def test_operator_view_updates_while_requests_run(web, page):
    url, store = web["server"].url, web["store"]
    page.goto(f"{url}/dashboard/?poll=250#/operator")
    page.wait_for_selector("#updates")
    hits0 = int(page.inner_text("tr[data-adapter='law'] td.hits"))
    total0 = int(page.inner_text("#requests-total"))
    stop = threading.Event()

    def run():
        i = 100
        while not stop.is_set():
            web["traffic"](2, i)
            i += 2
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: int(page.inner_text("#requests-total")) >= total0 + 6, 30, "the request count to grow")
        wait_for(lambda: int(page.inner_text("tr[data-adapter='law'] td.hits")) > hits0, 10, "adapter hits")
        wait_for(lambda: page.locator("svg[data-chart=line] path.series").count() >= 3, 10, "the charts")
        updates = int(page.get_attribute("#updates", "data-updates"))
        wait_for(lambda: int(page.get_attribute("#updates", "data-updates")) > updates + 2, 10, "more updates")
        screenshot(page, "operator")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert page.locator("tr[data-tier='device'][data-adapter='law']").count() == 1
    pending = store.counts()["pending"]
    wait_for(lambda: page.inner_text("#receipts-pending") == str(pending), 10, "the pending receipts count")
    assert page.inner_text("#batches-in-flight") == "0"
    assert int(page.inner_text("#receipts-settled")) == store.counts()["settled"] > 0


def test_amounts_beyond_2_to_the_53_format_exactly_in_the_page(web, page):
    page.goto(f"{web['server'].url}/dashboard/#/operator")
    values = ["0", "1", "9007199254740993", "123456789012345678901234567890",
              str(2**256 - 1), "-1000000000000000001"]
    got = page.evaluate("""async (values) => {
        const m = await import('/dashboard/amounts.js');
        return values.map((v) => [m.formatUnits(v, 18), m.formatUnits(v, 0), m.sum([v, v]).toString()]);
    }""", values)
    for v, (f18, f0, doubled) in zip(values, got):
        sign = "-" if v.startswith("-") else ""
        assert f18 == sign + exact(v.lstrip("-"), 18, "x")[:-2]
        assert f0 == f"{int(v):,}" and doubled == str(2 * int(v))
    bad = page.evaluate("""async () => { const m = await import('/dashboard/amounts.js');
        try { m.formatUnits('1e21', 18); return 'accepted'; } catch (e) { return 'refused'; } }""")
    assert bad == "refused"


def test_endpoints_refuse_bad_input_with_4xx_never_5xx(web):
    url = web["server"].url
    who = web["contributor"]
    flipped = who[:2] + "".join(c.swapcase() if c.isalpha() else c for c in who[2:])
    bad_addresses = ["0x123", "0x" + "g" * 40, flipped, "0x" + "1" * 41, "1" * 42, "0x" + "1" * 4000,
                     quote("0x" + "é" * 40), "%00", quote(who + "\n"), quote(" " + who), "%ff" * 21]
    for a in bad_addresses:
        status, js = http_json(f"{url}/v1/dashboard/contributors/{a}")
        assert status == 400 and js["error"]["code"] == "invalid_address", (a, status, js)
    for bad_id in ["0", "-1", "abc", "1e3", "1.0", "9" * 30, str(2**63), "0x10", quote("１")]:
        status, js = http_json(f"{url}/v1/dashboard/datanets/{bad_id}")
        assert status == 400 and js["error"]["code"] == "invalid_id", (bad_id, status, js)
    status, js = http_json(f"{url}/v1/dashboard/datanets/{2**63 - 1}")
    assert status == 404 and js["error"]["code"] == "datanet_not_found"
    # an address nobody paid: zeros, not an error; upper-case hex is an address too
    status, js = http_json(f"{url}/v1/dashboard/contributors/0x{'AB' * 20}")
    assert status == 200 and (js["settled"], js["claimable"], js["batches"]) == ("0", "0", [])
    for path in ["/dashboard/nope.js", "/dashboard/..%2Fdashboard.py", "/dashboard/%2e%2e/api.py",
                 "/dashboard/" + "a" * 5000, "/v1/dashboard/contributors/", "/v1/dashboard/nothing"]:
        status, _ = _raw(url + path)
        assert 400 <= status < 500, (path, status)
    # POST is not a dashboard verb
    status, _ = _raw(f"{url}/v1/dashboard/operator", method="POST")
    assert status == 405


def _raw(url: str, method: str = "GET") -> tuple[int, bytes]:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_pages_are_self_contained_and_locked_to_this_origin(web):
    from openlora.node.dashboard import CSP, WEB_DIR
    url = web["server"].url
    status, body = _raw(f"{url}/dashboard/")
    assert status == 200 and b'src="/dashboard/app.js"' in body
    for f in sorted(WEB_DIR.iterdir()):
        text = f.read_text()
        # no CDN, no remote font, no framework: the only URL is the SVG namespace
        urls = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text.replace("http://www.w3.org/2000/svg", ""))
        assert not urls, (f, urls)
        assert "innerHTML" not in text and "eval(" not in text, f
        if f.name in ("amounts.js", "contributor.js", "curator.js"):    # the modules that handle amounts
            assert not re.findall(r"Number\(|parseFloat|parseInt|Math\.|\.toFixed\(", text.split("\n", 1)[1]
                                  .replace("(a.weight_bps / 100).toFixed(2)", "")), f
        status, _ = _raw(f"{url}/dashboard/{f.name}")
        assert status == 200, f.name
    import urllib.request
    with urllib.request.urlopen(f"{url}/dashboard/app.js", timeout=30) as r:
        assert r.headers["Content-Security-Policy"] == CSP
        assert r.headers["Content-Type"].startswith("text/javascript")


def test_a_node_without_a_chain_still_shows_its_operator_view(web):
    """No deployment (free local mode): the chain views say so with a 404, the operator view works."""
    from openlora.node.api import NodeService, build_app
    from tests.service.server_util import ServerThread
    svc = NodeService(client=web["svc"].client, node_address="0x" + "11" * 20, free_local_mode=True)
    with ServerThread(build_app(svc)) as server:
        status, js = http_json(f"{server.url}/v1/dashboard/contributors/{web['contributor']}")
        assert status == 404 and js["error"]["code"] == "no_chain"
        status, js = http_json(f"{server.url}/v1/dashboard/datanets/1")
        assert status == 404 and js["error"]["code"] == "no_chain"
        status, js = http_json(f"{server.url}/v1/dashboard")
        assert status == 200 and js["chain"] is None
        status, js = http_json(f"{server.url}/v1/dashboard/operator")
        assert status == 200 and any(a["name"] == "law" for a in js["adapters"])
        assert js["settlement"] == {"enabled": False, "receipts": None, "batches_in_flight": None}


def test_matched_spans_are_highlighted_in_the_completion(web, page):
    """segments() marks each token run with the contribution its span matched; the page renders those runs as
    <mark> (the contributor answer is replaced in the browser to hold one receipt with evidence)."""
    from openlora.node.dashboard_data import segments
    texts = ["The", " CID", " of", " a", " block", " is", " its", " hash", "."]
    spans = [{"start": 1, "length": 4, "occurrences": [[3, 0, 17]]}, {"start": 6, "length": 2,
                                                                      "occurrences": [[1, 2, 0], [4, 1, 9]]},
             {"start": 50, "length": 3, "occurrences": [[9, 0, 0]]}, {"start": "x"}]
    segs = segments(texts, spans)
    assert segs == [{"text": "The", "contribution": None}, {"text": " CID of a block", "contribution": 3},
                    {"text": " is", "contribution": None}, {"text": " its hash", "contribution": 1},
                    {"text": ".", "contribution": None}]
    assert "".join(s["text"] for s in segs) == "".join(texts)
    who = web["contributor"]
    status, data = http_json(f"{web['server'].url}/v1/dashboard/contributors/{who}")
    assert status == 200
    data["receipts"][0]["segments"] = segs + [{"text": "<b>not html</b>", "contribution": None}]
    page.route(f"**/v1/dashboard/contributors/{who}", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(data)))
    page.goto(f"{web['server'].url}/dashboard/#/contributor/{who}")
    first = f"#receipts tr[data-request='{data['receipts'][0]['request_id']}']"
    page.wait_for_selector(f"{first} mark")
    marks = page.query_selector_all(f"{first} mark")
    assert [(m.inner_text(), m.get_attribute("data-contribution")) for m in marks] == \
        [(" CID of a block", "3"), (" its hash", "1")]
    assert page.locator("#receipts b").count() == 0          # text stays text
    assert "<b>not html</b>" in page.inner_text(first)


def test_published_receipts_are_read_only_from_this_nodes_own_store(web, tmp_path):
    """A batch's receiptsUri is whatever its settler wrote on chain: the dashboard reads a file:// URI only inside
    the node's receipts folder (regular files, bounded) and ipfs:// only from blocks it already holds."""
    import os

    from openlora.content.blockstore import Blockstore
    from openlora.content.importer import add_bytes
    from openlora.node import dashboard_data as dd
    folder = web["home"] / "receipts"
    good = sorted(folder.glob("*.json"))[0]
    blocks = Blockstore(tmp_path / "ipfs")
    src = dd.Sources(blocks=blocks, publish_dirs=(folder,))
    assert dd.read_receipts_file(src, good.as_uri()) == good.read_bytes()
    assert dd.published_receipts(src, good.as_uri())
    held = add_bytes(good.read_bytes(), sink=blocks.put_trusted).cid
    assert dd.read_receipts_file(src, f"ipfs://{held}") == good.read_bytes()
    (folder / "link.json").symlink_to(good)
    os.mkfifo(folder / "fifo.json")
    (folder / "big.json").write_bytes(b" " * (dd.MAX_PUBLISHED_BYTES + 1))
    (folder / "deep.json").write_bytes(b"[" * 100_000)
    refused = ["file:///dev/zero", "file:///etc/passwd", (web["home"] / "config.toml").as_uri(),
               f"file://{folder}/../config.toml", (folder / "link.json").as_uri(), (folder / "fifo.json").as_uri(),
               (folder / "big.json").as_uri(), "receipts/x.json", "http://127.0.0.1:1/x.json", "ipfs://notacid",
               "ipfs://bafkreie7q3iidccmpvszul7kudcvvuavuo7u6gzlbobczuk5nqk3b4akba", "x" * 5000, ""]
    for uri in refused:
        with pytest.raises((ValueError, OSError)):
            dd.read_receipts_file(src, uri)
        assert dd.published_receipts(src, uri) is None, uri
    assert dd.published_receipts(src, (folder / "deep.json").as_uri()) is None
    for name in ("link.json", "fifo.json", "big.json", "deep.json"):
        (folder / name).unlink()


def test_a_chain_that_does_not_answer_is_a_503_not_a_crash(web):
    from web3 import Web3

    from openlora.devnet.chain import free_port
    from openlora.node.api import build_app
    from openlora.node.dashboard_data import Sources
    from tests.service.server_util import ServerThread
    dead = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{free_port()}", request_kwargs={"timeout": 2},
                                  exception_retry_configuration=None))
    with ServerThread(build_app(web["svc"], dashboard=Sources(w3=dead, deployment=web["dep"]))) as server:
        status, js = http_json(f"{server.url}/v1/dashboard")
        assert status == 200 and js["chain"]["token"] is None and js["chain"]["chain_id"] == web["dep"].chain_id
        for path in (f"contributors/{web['contributor']}", "datanets", f"datanets/{web['extra']['datanet_id']}"):
            status, js = http_json(f"{server.url}/v1/dashboard/{path}")
            assert status == 503 and js["error"]["code"] == "chain_unavailable", (path, js)
            assert "127.0.0.1" not in js["error"]["message"]
