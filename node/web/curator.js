// Curator view: a Datanet's pending contributions with their duplicate flags, every contribution's status and
// weight, the versions published, and its usage (adapters registered on it, this node's requests to them).

import { fill, h, table, short, when } from "./dom.js";
import { formatUnits } from "./amounts.js";

async function picker(ctx) {
  const { main, getJSON } = ctx;
  const list = await getJSON("/v1/dashboard/datanets");
  const rows = list.datanets.map((d) => h("tr", { "data-datanet": d.datanet_id },
    h("td", {}, h("a", { href: `#/curator/${d.datanet_id}` }, `#${d.datanet_id}`)),
    h("td", {}, d.metadata.name || "–"), h("td", { title: d.curator }, short(d.curator)),
    h("td", {}, String(d.contributions)), h("td", {}, String(d.versions))));
  fill(main, h("h2", {}, "Datanets"),
    table(["id", "name", "curator", "contributions", "versions"], rows, { id: "datanets" }));
}

function flag(p) {
  if (!p.readable) return h("span", { class: "warn", title: p.why }, "not readable here");
  const n = p.exact_duplicates + p.near_duplicates;
  if (!n) return h("span", { class: "ok" }, "no duplicates");
  return h("span", { class: "flag", "data-flag": "duplicates" },
    `FLAGGED: ${p.exact_duplicates} exact, ${p.near_duplicates} near duplicate row(s)`);
}

export async function renderCurator(ctx, id) {
  if (!id) return picker(ctx);
  const { main, getJSON } = ctx;
  const d = await getJSON(`/v1/dashboard/datanets/${encodeURIComponent(id)}`);
  const pending = d.pending.map((p) => h("tr", { class: "pending", "data-contribution": p.id },
    h("td", {}, `#${p.id}`), h("td", { title: p.contributor }, short(p.contributor)),
    h("td", { title: p.cid }, short(p.cid, 16)), h("td", {}, formatUnits(String(p.size), 0)),
    h("td", {}, p.readable ? formatUnits(String(p.rows), 0) : "–"),
    h("td", {}, p.readable ? formatUnits(p.weight, 0) : "–"), h("td", {}, flag(p))));
  const all = d.contributions.map((c) => h("tr", { "data-contribution": c.id, "data-status": c.status },
    h("td", {}, `#${c.id}`), h("td", { title: c.contributor }, short(c.contributor)),
    h("td", { title: c.cid }, short(c.cid, 16)), h("td", {}, c.status), h("td", {}, formatUnits(c.weight, 0))));
  const versions = d.versions.map((v) => h("tr", { "data-version": v.version },
    h("td", {}, `v${v.version}`), h("td", { title: v.manifest_cid }, short(v.manifest_cid, 16)),
    h("td", {}, when(v.published_at)), h("td", {}, formatUnits(v.total_weight, 0)), h("td", {}, String(v.contributions))));
  const usage = d.usage.adapters.map((a) => h("tr", { "data-adapter": a.cid },
    h("td", { title: a.cid }, short(a.cid, 16)), h("td", { title: a.author }, short(a.author)),
    h("td", {}, `${(a.weight_bps / 100).toFixed(2)}%`), h("td", {}, formatUnits(a.price_per_token, 0)),
    h("td", {}, a.requests === undefined ? "–" : String(a.requests)),
    h("td", {}, a.tokens === undefined ? "–" : formatUnits(String(a.tokens), 0)),
    h("td", {}, a.value === undefined ? "–" : formatUnits(a.value, 0))));
  const meta = d.metadata || {};
  fill(main, 
    h("h2", {}, `Datanet ${d.datanet_id}`, meta.name ? ` · ${meta.name}` : ""),
    h("p", { class: "note" }, meta.description || "", meta.license ? ` License ${meta.license}.` : "",
      " Curator ", h("code", {}, d.curator), `, created ${when(d.created_at)}.`),
    h("section", {}, h("h2", {}, `Pending review (${d.pending.length})`),
      table(["id", "contributor", "CID", "bytes", "rows", "weight if accepted", "duplicates"], pending, { id: "pending" }),
      h("p", { class: "note" }, "Review with ", h("code", {}, `openlora-node datanet review ${d.datanet_id} ID --accept|--reject --reason …`))),
    h("section", {}, h("h2", {}, "Contributions"),
      table(["id", "contributor", "CID", "status", "weight (latest version)"], all, { id: "contributions" })),
    h("section", {}, h("h2", {}, "Versions published"),
      table(["version", "manifest", "published", "total weight (tokens)", "contributions"], versions, { id: "versions" })),
    h("section", {}, h("h2", {}, "Usage"),
      table(["adapter", "author", "Datanet weight", "price/token (wei)", "requests here", "tokens here", "value here (wei)"],
        usage, { id: "usage" })));
}
