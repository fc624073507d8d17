// The dashboard's entry: reads /v1/dashboard once, then routes #/contributor/<address>, #/curator/<id>, #/operator.

import { fill, h, short } from "./dom.js";
import { renderContributor } from "./contributor.js";
import { renderCurator } from "./curator.js";
import { renderOperator } from "./operator.js";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// GET a dashboard endpoint; an error answer becomes an ApiError carrying the node's one-line message
export async function getJSON(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  let body = null;
  try {
    body = await r.json();
  } catch (e) {
    throw new ApiError(r.status, "bad_response", `${path}: the node answered ${r.status} without JSON`);
  }
  if (!r.ok) {
    const err = body && body.error ? body.error : {};
    throw new ApiError(r.status, err.code || "error", err.message || `HTTP ${r.status}`);
  }
  return body;
}

export function errorBox(e) {
  return h("div", { class: "error", role: "alert", "data-code": e.code || "error" }, e.message || String(e));
}

const state = { node: null, stop: null };

function nodeLine(node) {
  const el = document.getElementById("node");
  fill(el, 
    h("span", {}, node.name), " · ", h("code", { title: node.address }, short(node.address)), " · ",
    h("span", {}, node.base_model),
    node.chain
      ? [" · chain ", h("span", {}, String(node.chain.chain_id)),
         node.chain.token ? [" · token ", h("span", { id: "token-symbol" }, node.chain.token.symbol)] : " · chain not reachable"]
      : " · no chain (free local mode)");
}

async function route() {
  if (state.stop) {
    state.stop();
    state.stop = null;
  }
  const [, view = "contributor", arg = ""] = (location.hash || "#/contributor").split("/");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
  const main = document.getElementById("view");
  fill(main, h("p", { class: "note" }, "loading…"));
  main.dataset.view = view;
  const ctx = { node: state.node, main, getJSON, errorBox, onStop: (fn) => { state.stop = fn; } };
  try {
    if (view === "curator") await renderCurator(ctx, decodeURIComponent(arg));
    else if (view === "operator") await renderOperator(ctx);
    else await renderContributor(ctx, decodeURIComponent(arg));
  } catch (e) {
    fill(main, errorBox(e));
  }
  main.dataset.ready = "1";
}

async function start() {
  try {
    state.node = await getJSON("/v1/dashboard");
    nodeLine(state.node);
  } catch (e) {
    document.getElementById("node").replaceChildren(errorBox(e));
    state.node = { chain: null };
  }
  window.addEventListener("hashchange", route);
  await route();
}

start();
