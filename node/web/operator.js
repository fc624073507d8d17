// Operator view: adapters by tier with hits and loads, throughput and queue over time, KV use, settlement state.
// Polls /v1/dashboard/operator every second (or ?poll=ms in the page's address) while it is shown.

import { fill, h, table, short, when } from "./dom.js";
import { lineChart, bar } from "./charts.js";

const TIERS = ["device", "host", "loading", "disk", "failed"];

function mib(bytes) {
  return `${(bytes / 2 ** 20).toFixed(2)} MiB`;
}

function render(main, d, updates) {
  const e = d.engine || { waiting: 0, running: 0, kv_blocks_used: 0, kv_blocks_total: 0, steps: 0, tiers: {} };
  const byTier = TIERS.map((t) => [t, d.adapters.filter((a) => a.tier === t)]).filter(([t, list]) => list.length || t !== "failed");
  const tierRows = byTier.flatMap(([t, list]) => [
    h("tr", { class: "tier", "data-tier": t }, h("th", { colspan: 7 }, `${t} (${list.length})`,
      e.tiers[t] ? ` · ${mib(e.tiers[t].used_bytes)} of ${mib(e.tiers[t].budget_bytes)}` : "")),
    ...list.map((a) => h("tr", { "data-adapter": a.name, "data-tier": a.tier },
      h("td", { title: a.cid || "" }, a.name.length > 24 ? short(a.name, 16) : a.name), h("td", {}, String(a.rank)),
      h("td", {}, mib(a.bytes)), h("td", { class: "hits" }, String(a.hits)), h("td", {}, String(a.misses)),
      h("td", { class: "loads" }, String(a.loads)), h("td", {}, a.pinned ? "pinned" : a.error ? a.error : ""))),
  ]);
  const pts = (k) => d.series.map((p) => ({ x: p.time, y: p[k] }));
  const st = d.settlement;
  const r = st.receipts || {};
  fill(main, 
    h("h2", {}, "Operator ", h("span", { class: "note", id: "updates", "data-updates": updates }, `updated ${updates}×`)),
    d.node.dead ? h("div", { class: "error" }, "the engine stopped: restart the node") : null,
    h("section", { class: "cards" },
      h("div", { class: "card" }, h("div", { class: "label" }, "queue"), h("span", { id: "queue", class: "big" }, String(e.waiting))),
      h("div", { class: "card" }, h("div", { class: "label" }, "running"), h("span", { id: "running", class: "big" }, String(e.running))),
      h("div", { class: "card" }, h("div", { class: "label" }, "engine steps"), h("span", { id: "steps", class: "big" }, String(e.steps))),
      h("div", { class: "card" }, h("div", { class: "label" }, "KV blocks"),
        h("span", { id: "kv", class: "big" }, `${e.kv_blocks_used} / ${e.kv_blocks_total}`), bar(e.kv_blocks_used, e.kv_blocks_total, "KV use")),
      h("div", { class: "card" }, h("div", { class: "label" }, "requests served"),
        h("span", { id: "requests-total", class: "big" }, String(d.series.length ? d.series[d.series.length - 1].requests_total : 0)))),
    h("section", {}, h("h2", {}, "Throughput and queue"),
      lineChart([{ name: "tokens/s", cls: "a", points: pts("tokens_per_s") }], "generated tokens per second"),
      lineChart([{ name: "waiting", cls: "b", points: pts("waiting") }, { name: "running", cls: "a", points: pts("running") }],
        "queue and running sequences")),
    h("section", {}, h("h2", {}, "Adapters by tier"),
      table(["adapter", "rank", "size", "hits", "misses", "loads", ""], tierRows, { id: "adapters" })),
    h("section", { id: "settlement" }, h("h2", {}, "Settlement"),
      st.enabled || st.receipts ? h("dl", {},
        h("dt", {}, "receipts pending"), h("dd", { id: "receipts-pending" }, String(r.pending ?? "–")),
        h("dt", {}, "receipts in a batch in flight"), h("dd", { id: "receipts-submitted" }, String(r.submitted ?? "–")),
        h("dt", {}, "receipts settled"), h("dd", { id: "receipts-settled" }, String(r.settled ?? "–")),
        h("dt", {}, "batches in flight"), h("dd", { id: "batches-in-flight" }, String(st.batches_in_flight ?? "–")),
        h("dt", {}, "batches settled (this run)"), h("dd", {}, String(st.batches_settled ?? "–")),
        h("dt", {}, "chain errors (this run)"), h("dd", {}, String(st.chain_errors ?? "–")),
        h("dt", {}, "last error"), h("dd", { id: "last-error" }, st.last_error || "none"),
        h("dt", {}, "last transaction"), h("dd", {}, st.last_tx ? short(st.last_tx, 14) : "–"))
        : h("p", { class: "note" }, "no settlement: this node has no chain deployment")));
}

export async function renderOperator(ctx) {
  const { main, getJSON } = ctx;
  const q = new URLSearchParams(location.search);
  const poll = Math.max(200, Math.min(60000, parseInt(q.get("poll") || "1000", 10) || 1000));
  let updates = 0, stopped = false, timer = null;
  const tick = async () => {
    try {
      const d = await getJSON("/v1/dashboard/operator");
      if (stopped) return;
      updates += 1;
      render(main, d, updates);
    } catch (e) {
      if (!stopped) fill(main, ctx.errorBox(e));
    }
    if (!stopped) timer = setTimeout(tick, poll);
  };
  ctx.onStop(() => { stopped = true; clearTimeout(timer); });
  await tick();
}
