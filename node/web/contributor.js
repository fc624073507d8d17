// Contributor view: earned / settled / claimed / claimable for any address (no keystore), earnings over time, the
// split per Datanet and per contribution (matched spans vs static share), the receipts behind it, and the claim.

import { fill, h, table, short, when } from "./dom.js";
import { wei, formatToken, percent } from "./amounts.js";
import { amountStepChart } from "./charts.js";

function amount(value, token, field) {
  return h("span", { class: "amount", "data-field": field, "data-wei": value, title: `${value} wei` },
    formatToken(value, token));
}

function card(label, value, token, field, note) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), amount(value, token, field),
    note ? h("div", { class: "note" }, note) : null);
}

function addressForm(current) {
  const input = h("input", { id: "address", name: "address", value: current || "", placeholder: "0x… any address",
    size: 46, spellcheck: "false", autocomplete: "off" });
  const form = h("form", { class: "address-form", onsubmit: (ev) => {
    ev.preventDefault();
    location.hash = `#/contributor/${input.value.trim()}`;
  } }, h("label", { for: "address" }, "Address "), input, h("button", { type: "submit" }, "Show"));
  return form;
}

// a completion with the spans that matched the Datanet highlighted (segments: [{text, contribution|null}])
function completion(segments) {
  if (!Array.isArray(segments) || !segments.length) return h("span", { class: "note" }, "no span evidence");
  return h("span", { class: "completion" }, segments.map((seg) => (seg.contribution !== null && seg.contribution !== undefined
    ? h("mark", { title: `contribution #${seg.contribution}`, "data-contribution": seg.contribution }, seg.text)
    : seg.text)));
}

async function claimWithWallet(data, button, out) {
  button.disabled = true;
  try {
    const [from] = await window.ethereum.request({ method: "eth_requestAccounts" });
    const chainId = await window.ethereum.request({ method: "eth_chainId" });
    if (BigInt(chainId) !== BigInt(data.chain_id)) {
      throw new Error(`the wallet is on chain ${BigInt(chainId)}; switch it to chain ${data.chain_id} first`);
    }
    const tx = await window.ethereum.request({ method: "eth_sendTransaction",
      params: [{ from, to: data.claim.settlement, data: data.claim.calldata }] });
    out.replaceChildren(h("span", { class: "ok", id: "claim-tx" }, `sent: ${tx}`));
  } catch (e) {
    out.replaceChildren(h("span", { class: "error", id: "claim-error" }, e.message || String(e)));
    button.disabled = false;
  }
}

function claimPanel(data, token) {
  const out = h("div", { class: "claim-out" });
  const parts = [h("h2", {}, "Claim")];
  if (wei(data.claim.amount) === 0n) {
    parts.push(h("p", { class: "note", id: "claim-none" }, "nothing to claim"));
    return h("section", { id: "claim" }, parts);
  }
  parts.push(h("p", {}, "Claimable: ", amount(data.claim.amount, token, "claim-amount"),
    ` from ${data.claim.items} batch(es), paid to ${short(data.address)} whoever sends the claim.`));
  if (window.ethereum) {
    const button = h("button", { id: "claim-wallet", type: "button" }, "Claim with browser wallet");
    button.addEventListener("click", () => claimWithWallet(data, button, out));
    parts.push(button);
  }
  parts.push(h("p", {}, "Or from a shell with this node's CLI:"), h("pre", { id: "claim-command" }, data.claim.command));
  parts.push(out);
  return h("section", { id: "claim" }, parts);
}

export async function renderContributor(ctx, address) {
  const { main, getJSON, node } = ctx;
  const form = addressForm(address || "");
  if (!address) {
    fill(main, h("h2", {}, "Contributor"), form,
      h("p", { class: "note" }, "Any address: a contributor, an adapter author, a node operator. Try this node's: ",
        h("a", { href: `#/contributor/${node && node.address}` }, node && node.address)));
    return;
  }
  if (!/^0x[0-9a-fA-F]{40}$/.test(address)) {
    fill(main, h("h2", {}, "Contributor"), form, ctx.errorBox({ code: "invalid_address",
      message: "not an address: expected 0x followed by 40 hexadecimal digits" }));
    return;
  }
  const data = await getJSON(`/v1/dashboard/contributors/${encodeURIComponent(address)}`);
  const token = data.token;
  const series = data.series.map((p) => ({ x: p.block, t: p.time, y: wei(p.cumulative) }));
  const fmt = (v) => formatToken(v, token);
  const datanetRows = data.by_datanet.flatMap((d) => [
    h("tr", { class: "datanet", "data-datanet": d.datanet_id === null ? "none" : d.datanet_id },
      h("td", {}, d.datanet_id === null ? "receipts without span evidence"
        : h("a", { href: `#/curator/${d.datanet_id}` }, `Datanet ${d.datanet_id}`)),
      h("td", {}, amount(d.matched, token, "matched")), h("td", {}, amount(d.static, token, "static")), h("td", {}, "")),
    ...d.contributions.filter((c) => c.id !== null || d.datanet_id !== null).map((c) => h("tr",
      { class: "contribution", "data-contribution": c.id === null ? "none" : c.id },
      h("td", {}, c.id === null ? "  (contribution not recorded)" : `  contribution #${c.id}`),
      h("td", {}, amount(c.matched, token, "matched")), h("td", {}, amount(c.static, token, "static")),
      h("td", {}, String(c.receipts)))),
  ]);
  const roleRows = [["author", "as adapter author"], ["operator", "as node operator"]]
    .filter(([k]) => wei(data.gross[k]) !== 0n)
    .map(([k, label]) => h("tr", {}, h("td", {}, label), h("td", {}, amount(data.gross[k], token, `role-${k}`))));
  const adapterRows = Object.entries(data.by_adapter).map(([k, v]) => h("tr", { "data-adapter": k },
    h("td", { title: k }, short(k, 24)), h("td", {}, amount(v, token, "adapter-share"))));
  const batchRows = data.batches.map((b) => h("tr", { "data-batch": b.batch_id },
    h("td", { title: b.batch_id }, short(b.batch_id, 12)), h("td", {}, String(b.block)), h("td", {}, when(b.time)),
    h("td", {}, amount(b.amount, token, "batch-amount")), h("td", {}, b.claimed ? "claimed" : "claimable"),
    h("td", { title: b.tx_hash }, short(b.tx_hash, 12))));
  const receiptRows = data.receipts.map((r) => h("tr", { "data-request": r.request_id },
    h("td", { title: r.request_id }, short(r.request_id, 14)), h("td", {}, when(r.created_at)),
    h("td", { title: r.adapter }, short(r.adapter, 14)), h("td", {}, `${r.prompt_tokens}+${r.completion_tokens}`),
    h("td", {}, amount(r.price, token, "price")), h("td", {}, amount(r.share, token, "share")),
    h("td", {}, r.status), h("td", {}, completion(r.segments))));
  const total = wei(data.earned);
  fill(main, 
    h("h2", {}, "Contributor ", h("code", { id: "who" }, data.address)), form,
    h("section", { class: "cards" },
      card("earned", data.earned, token, "earned", data.unsettled_local === null ? "settled only (no local receipts)"
        : "settled + this node's unsettled receipts"),
      card("settled", data.settled, token, "settled", `${data.batches.length} batch(es)`),
      card("claimed", data.claimed, token, "claimed", total ? percent(wei(data.claimed), total) + " of earned" : ""),
      card("claimable", data.claimable, token, "claimable"),
      data.unsettled_local === null ? null : card("not settled yet", data.unsettled_local, token, "unsettled",
        "this node's receipts, gross")),
    h("section", {}, h("h2", {}, "Earnings over time (settled, cumulative)"),
      amountStepChart(series, "cumulative settled earnings", fmt)),
    h("section", {}, h("h2", {}, "Per Datanet and contribution (gross, before the protocol fee)"),
      table(["Datanet / contribution", "matched spans", "static share", "receipts"], datanetRows, { id: "by-datanet" }),
      h("p", { class: "note" }, "Settled receipts, as `openlora-node payouts` splits them: matched spans where the " +
        "receipt's evidence names this address's contributions, static share by the Datanet version's weights " +
        "otherwise. Receipts written without evidence cannot be told apart by Datanet.")),
    roleRows.length ? h("section", {}, h("h2", {}, "Other roles"), table(["role", "gross"], roleRows, { id: "by-role" })) : null,
    h("section", {}, h("h2", {}, "Per adapter (gross, settled)"),
      table(["adapter", "share"], adapterRows, { id: "by-adapter" })),
    h("section", {}, h("h2", {}, "Batches"),
      table(["batch", "block", "time", "amount", "state", "tx"], batchRows, { id: "batches" })),
    h("section", {}, h("h2", {}, `Receipts (${data.receipts.length} of ${data.receipts_total}, newest first)`),
      table(["request", "time", "adapter", "tokens", "price", "share", "state", "completion"], receiptRows,
        { id: "receipts" })),
    data.unreadable_batches.length ? h("p", { class: "note" },
      `${data.unreadable_batches.length} batch(es) whose published receipts this node cannot read`) : null,
    claimPanel(data, token));
}
