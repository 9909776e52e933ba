// The gateway's web console: a single page in plain JavaScript (no build step, no library).
//
// Hash routes (#/units/u1a2b3c ...) pick a page; every list is paged and searched on the server,
// so nothing ever loads "everything" (the gateway may hold 200,000 channels). Live updates come
// over Server-Sent Events: a device's on/offline change updates every badge that shows it
// (elements with data-device-status) at once, and the page's counters are refetched shortly after.

import { t, getLang, setLang } from "./i18n.js";
import * as A from "./api.js";
import { h, $ } from "./dom.js";
import * as P from "./player.js";

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function fmtTime(unix) {
  if (unix === null || unix === undefined || unix === "") return "—";
  // UNIX seconds, or an ISO 8601 text (record items carry the device's own local times).
  const d = typeof unix === "string" && !/^[\d.]+$/.test(unix) ? new Date(unix) : new Date(Number(unix) * 1000);
  if (Number.isNaN(d.getTime())) return String(unix);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(
    d.getMinutes()
  )}:${p(d.getSeconds())}`;
}

function fmtBitrate(bps) {
  const n = Number(bps) || 0;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} Mbit/s`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kbit/s`;
  return `${n.toFixed(0)} bit/s`;
}

function fmtBytes(b) {
  const n = Number(b) || 0;
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

const ratio = (c) => (c ? `${c.online ?? 0} / ${c.total ?? 0}` : "—");

function pct(rate, counts) {
  let r = rate;
  if (r === undefined || r === null) {
    r = counts && counts.total ? counts.online / counts.total : null;
  }
  return r === null || r === undefined ? "—" : `${(Number(r) * 100).toFixed(1)}%`;
}

function statusBadge(online, deviceId) {
  return h(
    "span",
    {
      class: `badge ${online ? "on" : "off"}`,
      "data-device-status": deviceId || undefined,
      "data-online": online ? "true" : "false",
    },
    online ? t("common.online") : t("common.offline")
  );
}

function setBadge(el, online) {
  el.className = `badge ${online ? "on" : "off"}`;
  el.dataset.online = online ? "true" : "false";
  el.textContent = online ? t("common.online") : t("common.offline");
}

function stateBadge(state) {
  const cls = state === "registered" ? "on" : state === "registering" ? "warn" : "off";
  return h("span", { class: `badge ${cls}`, "data-state": state }, t(`state.${state}`));
}

const link = (href, text, attrs = {}) => h("a", { href, ...attrs }, text);
const devLink = (id) => link(`#/devices/${encodeURIComponent(id)}`, id);

// Live preview of a channel ({id, name}) in the player panel above the page (player.js).
function preview(channel) {
  if (!P.play(channel)) notify(t("preview.too_many", P.MAX_TILES), "error");
}

function playButton(channel, label = false) {
  return h("button", {
    class: "small play",
    "data-play": channel.id,
    title: t("preview.play"),
    "aria-label": `${t("preview.play")} ${channel.name || channel.id}`,
    onclick: (ev) => {
      ev.stopPropagation();
      preview(channel);
    },
  }, label ? `▶ ${t("preview.play")}` : "▶");
}

// ---------------------------------------------------------------------------------------------
// Notices, modals, confirmations.

function notify(message, kind = "ok") {
  const box = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  const toasts = $("#toasts");
  toasts.append(box);
  while (toasts.children.length > 3) toasts.firstElementChild.remove();
  box.addEventListener("click", () => box.remove());
  setTimeout(() => box.remove(), kind === "error" ? 8000 : 3500);
}

function showError(err) {
  if (err && err.status === 401) return; // the login form takes over
  const msg = err && err.message ? err.message : String(err);
  notify(err && err.status === 403 ? `${t("error.forbidden")}: ${msg}` : msg, "error");
}

function modal(title, body, buttons) {
  const back = h("div", { class: "modal-back" });
  const box = h("div", { class: "modal", role: "dialog", "aria-label": title }, h("h3", {}, title), body);
  const row = h("div", { class: "buttons" });
  for (const b of buttons) row.append(b);
  box.append(row);
  back.append(box);
  document.body.append(back);
  const close = () => back.remove();
  return { back, box, close };
}

function confirmBox(message) {
  return new Promise((resolve) => {
    let m = null;
    const ok = h("button", { class: "danger", onclick: () => { m.close(); resolve(true); } }, t("common.yes"));
    const no = h("button", { onclick: () => { m.close(); resolve(false); } }, t("common.no"));
    m = modal(message, h("div"), [ok, no]);
    ok.focus();
  });
}

// A form in a modal. fields: [{name, label, type: text|password|number|select|checkbox, options,
// hint, required}]. submit(values) may throw an ApiError; its message is shown and the field it
// names is marked.
function formModal(title, fields, initial, submit) {
  const inputs = {};
  const error = h("div", { class: "form-error", role: "alert" });
  const form = h("form", { class: "form" });
  for (const f of fields) {
    let input;
    const value = initial && initial[f.name] !== undefined && initial[f.name] !== null ? initial[f.name] : f.value ?? "";
    if (f.type === "select") {
      input = h(
        "select",
        { name: f.name },
        f.options.map(([v, label]) => h("option", { value: v, selected: String(value) === String(v) }, label))
      );
    } else if (f.type === "checkbox") {
      input = h("input", { type: "checkbox", name: f.name, checked: Boolean(value) });
    } else {
      input = h("input", {
        type: f.type || "text",
        name: f.name,
        value: String(value),
        placeholder: f.hint || "",
        required: f.required || undefined,
        autocomplete: f.type === "password" ? "new-password" : "off",
      });
    }
    inputs[f.name] = input;
    form.append(h("label", { class: f.type === "checkbox" ? "check" : "" }, h("span", {}, f.label), input));
  }
  form.append(error);
  const save = h("button", { type: "submit", class: "primary" }, t("common.save"));
  const cancel = h("button", { type: "button" }, t("common.cancel"));
  form.append(h("div", { class: "buttons" }, save, cancel));
  const m = modal(title, form, []);
  cancel.addEventListener("click", () => m.close());
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const values = {};
    for (const f of fields) {
      const input = inputs[f.name];
      if (f.type === "checkbox") values[f.name] = input.checked;
      else if (f.type === "number") values[f.name] = input.value === "" ? undefined : Number(input.value);
      else values[f.name] = input.value;
    }
    for (const i of Object.values(inputs)) i.classList.remove("bad");
    error.textContent = "";
    save.disabled = true;
    try {
      await submit(values);
      m.close();
    } catch (err) {
      if (err && err.status === 401) {
        m.close();
        return;
      }
      error.textContent = err && err.message ? err.message : String(err);
      if (err && err.field && inputs[err.field]) inputs[err.field].classList.add("bad");
    } finally {
      save.disabled = false;
    }
  });
  const first = form.querySelector("input, select");
  if (first) first.focus();
  return m;
}

// Drop empty strings so optional fields are left out of the request.
function compact(values) {
  const out = {};
  for (const [k, v] of Object.entries(values)) if (v !== "" && v !== undefined) out[k] = v;
  return out;
}

// ---------------------------------------------------------------------------------------------
// A paged, server-searched table. path + params() are asked with q, offset and limit; the answer
// is {total, items}.

function pagedTable(opts) {
  const limit = opts.limit || 50;
  const state = { offset: 0, q: "", total: 0, items: [] };
  const root = h("div", { class: "paged", "data-list": opts.name || opts.path });
  const tools = h("div", { class: "toolbar" });
  let search = null;
  if (opts.search !== false) {
    search = h("input", { type: "search", class: "search", placeholder: t("common.search") });
    search.addEventListener(
      "input",
      debounce(() => {
        state.q = search.value.trim();
        state.offset = 0;
        load();
      }, 300)
    );
    tools.append(search);
  }
  for (const extra of opts.tools || []) tools.append(extra);
  const table = h("table", { class: "grid" });
  const thead = h("thead", {}, h("tr", {}, opts.columns.map((c) => h("th", { class: c.cls || "" }, c.label))));
  const tbody = h("tbody");
  table.append(thead, tbody);
  const info = h("span", { class: "pageinfo" });
  const prev = h("button", { class: "small", onclick: () => { state.offset = Math.max(0, state.offset - limit); load(); } }, t("common.prev"));
  const next = h("button", { class: "small", onclick: () => { state.offset += limit; load(); } }, t("common.next"));
  const pager = h("div", { class: "pager" }, prev, info, next);
  root.append(tools, h("div", { class: "scroll" }, table), pager);
  let seq = 0;

  async function load() {
    const mine = ++seq;
    const params = { ...(opts.params ? opts.params() : {}), offset: state.offset, limit };
    if (opts.search !== false) params.q = state.q;
    let data;
    try {
      data = await A.get(opts.path, params);
    } catch (err) {
      if (mine === seq) {
        tbody.replaceChildren(h("tr", {}, h("td", { colspan: opts.columns.length, class: "muted" }, err.message)));
      }
      showError(err);
      return;
    }
    if (mine !== seq) return; // an older answer arriving late
    state.total = data.total ?? (data.items || []).length;
    state.items = data.items || [];
    if (state.offset > 0 && state.items.length === 0 && state.total > 0) {
      state.offset = Math.max(0, Math.floor((state.total - 1) / limit) * limit);
      load();
      return;
    }
    const rows = state.items.map((item) => {
      const tr = h("tr", opts.rowAttrs ? opts.rowAttrs(item) : {});
      for (const c of opts.columns) tr.append(h("td", { class: c.cls || "" }, c.value(item)));
      if (opts.onRow) {
        tr.classList.add("clickable");
        tr.addEventListener("click", (ev) => {
          if (ev.target.closest("a, button, input, select")) return;
          opts.onRow(item);
        });
      }
      return tr;
    });
    if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: opts.columns.length, class: "muted" }, t("common.none"))));
    tbody.replaceChildren(...rows);
    const first = state.total ? state.offset + 1 : 0;
    info.textContent = t("common.page", first, state.offset + state.items.length, state.total);
    prev.disabled = state.offset === 0;
    next.disabled = state.offset + state.items.length >= state.total;
    if (opts.loaded) opts.loaded(state);
  }

  tbody.append(h("tr", {}, h("td", { colspan: opts.columns.length, class: "muted" }, t("common.loading"))));
  load();
  return { el: root, reload: load, state };
}

// ---------------------------------------------------------------------------------------------
// Who is logged in, and what the role allows.

const RANK = { viewer: 0, operator: 1, admin: 2 };
function can(role) {
  const s = A.getSession();
  return Boolean(s && RANK[s.role] >= RANK[role]);
}

// ---------------------------------------------------------------------------------------------
// Live updates (SSE). The token goes in the query: EventSource cannot send headers.

let events = null;
const live = { onDevices: [], onCatalog: [], onAlarm: [], onSessions: [] };

function setLive(ok) {
  const el = $("#live");
  if (!el) return;
  el.className = ok ? "live on" : "live off";
  el.textContent = ok ? t("live.on") : t("live.off");
  el.dataset.state = ok ? "on" : "off";
}

function connectEvents() {
  disconnectEvents();
  const s = A.getSession();
  if (!s) return;
  events = new EventSource(`${A.BASE}/events?access_token=${encodeURIComponent(s.token)}`);
  events.addEventListener("open", () => setLive(true));
  events.addEventListener("error", () => setLive(false));
  const parse = (ev) => {
    try {
      return JSON.parse(ev.data);
    } catch (_) {
      return null;
    }
  };
  events.addEventListener("devices", (ev) => {
    const data = parse(ev);
    if (!data) return;
    setLive(true);
    for (const change of data.changes || []) {
      for (const el of document.querySelectorAll(`[data-device-status="${CSS.escape(change.id)}"]`)) {
        setBadge(el, change.online);
      }
    }
    for (const fn of live.onDevices) fn(data);
  });
  events.addEventListener("catalog", (ev) => {
    const data = parse(ev);
    if (data) for (const fn of live.onCatalog) fn(data);
  });
  events.addEventListener("alarm", (ev) => {
    const data = parse(ev);
    if (data) for (const fn of live.onAlarm) fn(data);
  });
  events.addEventListener("sessions", (ev) => {
    const data = parse(ev);
    if (data) for (const fn of live.onSessions) fn(data);
  });
}

function disconnectEvents() {
  if (events) events.close();
  events = null;
}

// ---------------------------------------------------------------------------------------------
// Routing. Each page gets a fresh view; what it registers (live handlers, timers) is dropped
// when the route changes.

let page = { timers: [] };

function resetPage() {
  for (const timer of page.timers) clearInterval(timer);
  live.onDevices = [];
  live.onCatalog = [];
  live.onAlarm = [];
  live.onSessions = [];
  page = { timers: [] };
}

const ROUTES = [
  [/^\/?$/, overviewPage, "overview"],
  [/^\/units$/, unitsPage, "units"],
  [/^\/units\/([^/]+)$/, unitPage, "units"],
  [/^\/tree$/, treePage, "tree"],
  [/^\/devices$/, devicesPage, "devices"],
  [/^\/devices\/([^/]+)$/, devicePage, "devices"],
  [/^\/uppers$/, uppersPage, "uppers"],
  [/^\/uppers\/([^/]+)$/, upperPage, "uppers"],
  [/^\/sessions$/, sessionsPage, "sessions"],
  [/^\/alarms$/, alarmsPage, "alarms"],
  [/^\/audit$/, auditPage, "audit"],
  [/^\/users$/, usersPage, "users"],
];

const NAV = [
  ["overview", "#/"],
  ["units", "#/units"],
  ["tree", "#/tree"],
  ["devices", "#/devices"],
  ["uppers", "#/uppers"],
  ["sessions", "#/sessions"],
  ["alarms", "#/alarms"],
  ["audit", "#/audit", "operator"],
  ["users", "#/users", "admin"],
];

function route() {
  if (!A.getSession()) {
    showLogin();
    return;
  }
  const path = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  resetPage();
  // A fresh container per visit: a slow page still loading when the route changes fills a
  // detached element, never the new page.
  const view = h("div", { class: "page" });
  $("#view").replaceChildren(view);
  for (const [re, fn, nav] of ROUTES) {
    const m = re.exec(path);
    if (!m) continue;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.nav === nav);
    document.body.dataset.page = nav;
    Promise.resolve(fn(view, ...m.slice(1))).catch(showError);
    return;
  }
  location.hash = "#/";
}

function section(title, ...kids) {
  return h("section", { class: "card" }, h("h2", {}, title), ...kids);
}

function pageTitle(text, ...actions) {
  return h("div", { class: "page-head" }, h("h1", {}, text), h("div", { class: "actions" }, actions));
}

// ---------------------------------------------------------------------------------------------
// Overview.

async function overviewPage(view) {
  view.append(pageTitle(t("nav.overview")));
  const tiles = h("div", { class: "tiles" });
  const unitsBox = h("div");
  const uppersBox = h("div");
  const alarmsBox = h("div");
  const chartBox = h("div", { class: "chart" }, t("common.loading"));
  view.append(
    tiles,
    h("div", { class: "cols" },
      section(t("overview.chart"), chartBox),
      section(t("overview.uppers"), uppersBox)),
    h("div", { class: "cols" },
      section(t("overview.units"), unitsBox),
      section(t("overview.alarms"), alarmsBox))
  );

  const tile = (key, label, value, sub) =>
    h("div", { class: "tile", "data-tile": key }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), h("div", { class: "sub" }, sub || ""));

  async function loadStats() {
    const s = await A.get("/stats");
    const reg = (s.uppers || []).filter((u) => u.state === "registered").length;
    tiles.replaceChildren(
      tile("devices", t("overview.devices"), ratio(s.devices), pct(null, s.devices)),
      tile("channels", t("overview.channels"), ratio(s.channels), pct(null, s.channels)),
      tile("sessions", t("overview.sessions"), String(s.sessions ? s.sessions.active : 0)),
      tile("uppers", t("overview.uppers"), `${reg} / ${(s.uppers || []).length}`, t("state.registered"))
    );
    const units = (s.units || []).slice().sort((a, b) => (a.online_rate ?? 0) - (b.online_rate ?? 0)).slice(0, 20);
    unitsBox.replaceChildren(
      units.length
        ? h("div", { class: "scroll" }, h("table", { class: "grid" },
            h("thead", {}, h("tr", {}, h("th", {}, t("field.name")), h("th", {}, t("field.devices")), h("th", {}, t("field.channels")), h("th", {}, t("field.rate")))),
            h("tbody", {}, units.map((u) =>
              h("tr", { "data-unit": u.id },
                h("td", {}, link(`#/units/${encodeURIComponent(u.id)}`, u.name || u.id)),
                h("td", {}, ratio(u.devices)),
                h("td", {}, ratio(u.channels)),
                h("td", {}, rateBar(u.online_rate, u.channels)))))))
        : h("p", { class: "muted" }, t("common.none"))
    );
    uppersBox.replaceChildren(
      (s.uppers || []).length
        ? h("ul", { class: "plain" }, s.uppers.map((u) => h("li", {}, link(`#/uppers/${encodeURIComponent(u.id)}`, u.name || u.id), " ", stateBadge(u.state))))
        : h("p", { class: "muted" }, t("common.none"))
    );
  }

  async function loadAlarms() {
    try {
      const a = await A.get("/alarms", { limit: 8 });
      alarmsBox.replaceChildren(
        (a.items || []).length
          ? h("table", { class: "grid" }, h("tbody", {}, a.items.map((x) =>
              h("tr", {}, h("td", {}, fmtTime(x.received_at ?? x.time)), h("td", {}, devLink(x.device_id)), h("td", {}, x.description || x.type || "")))))
          : h("p", { class: "muted" }, t("common.none"))
      );
    } catch (err) {
      alarmsBox.replaceChildren(h("p", { class: "muted" }, err.message));
    }
  }

  async function loadHistory() {
    try {
      const data = await A.get("/stats/history", { hours: 24 });
      chartBox.replaceChildren(chart(data.points || []));
    } catch (err) {
      chartBox.replaceChildren(h("p", { class: "muted" }, err.message));
    }
  }

  const refresh = debounce(() => loadStats().catch(showError), 500);
  live.onDevices.push(refresh);
  live.onCatalog.push(refresh);
  live.onSessions.push(refresh);
  live.onAlarm.push(debounce(loadAlarms, 500));
  page.timers.push(setInterval(loadHistory, 60000));
  await Promise.all([loadStats(), loadAlarms(), loadHistory()]);
}

function rateBar(rate, counts) {
  let r = rate;
  if (r === undefined || r === null) r = counts && counts.total ? counts.online / counts.total : 0;
  const w = Math.max(0, Math.min(100, Number(r) * 100));
  return h("div", { class: "rate" }, h("div", { class: "bar" }, h("div", { class: "fill", style: `width:${w.toFixed(1)}%` })), h("span", {}, pct(r)));
}

// The last day of devices online, drawn as inline SVG: the total as a faint line, online filled.
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const kid of kids) el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return el;
}

function chart(points) {
  if (!points.length) return h("p", { class: "muted" }, t("overview.no_history"));
  const W = 600, H = 200, L = 40, R = 10, T = 10, B = 24;
  const now = Date.now() / 1000;
  const t0 = Math.min(points[0].t, now - 24 * 3600);
  const t1 = Math.max(points[points.length - 1].t, t0 + 60);
  const top = Math.max(1, ...points.map((p) => Math.max(p.devices_total || 0, p.devices_online || 0)));
  const x = (tt) => L + ((tt - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const line = (key) => points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p[key] || 0).toFixed(1)}`).join(" ");
  const online = line("devices_online");
  const area = `${online} L${x(points[points.length - 1].t).toFixed(1)},${y(0)} L${x(points[0].t).toFixed(1)},${y(0)} Z`;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": t("overview.chart") });
  for (const frac of [0, 0.5, 1]) {
    const v = Math.round(top * frac);
    root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }));
    root.append(svg("text", { x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, String(v)));
  }
  for (let k = 0; k <= 4; k++) {
    const tt = t0 + ((t1 - t0) * k) / 4;
    const d = new Date(tt * 1000);
    const label = `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
    const anchor = k === 0 ? "start" : k === 4 ? "end" : "middle";
    root.append(svg("text", { x: x(tt), y: H - 6, class: "axis", "text-anchor": anchor }, label));
  }
  root.append(svg("path", { d: area, class: "area" }));
  root.append(svg("path", { d: line("devices_total"), class: "total" }));
  root.append(svg("path", { d: online, class: "online" }));
  const last = points[points.length - 1];
  root.append(svg("circle", { cx: x(last.t), cy: y(last.devices_online || 0), r: 3, class: "dot" }));
  return root;
}

// ---------------------------------------------------------------------------------------------
// Units.

const KINDS = ["enterprise", "school", "bank", "hospital", "government", "other"];

function unitFields() {
  return [
    { name: "name", label: t("field.name"), required: true },
    { name: "kind", label: t("field.kind"), type: "select", options: KINDS.map((k) => [k, t(`kind.${k}`)]) },
    { name: "address", label: t("field.address") },
    { name: "contact", label: t("field.contact") },
    { name: "phone", label: t("field.phone") },
    { name: "civil_code", label: t("field.civil_code") },
  ];
}

async function unitsPage(view) {
  const add = can("operator")
    ? h("button", {
        class: "primary",
        id: "new-unit",
        onclick: () =>
          formModal(t("units.new"), unitFields(), { kind: "enterprise" }, async (v) => {
            const unit = await A.post("/units", compact(v));
            notify(t("common.saved"));
            location.hash = `#/units/${encodeURIComponent(unit.id)}`;
          }),
      }, t("units.new"))
    : null;
  const picker = h("input", { type: "file", accept: ".csv,.xlsx", hidden: true, id: "import-file" });
  const importBtn = can("operator")
    ? h("button", { id: "import-accounts", onclick: () => picker.click() }, t("units.import"))
    : null;
  const exportCsv = h("button", { onclick: () => A.download("/accounts/export.csv", "accounts.csv").catch(showError) }, t("units.export_csv"));
  const exportXlsx = h("button", { onclick: () => A.download("/accounts/export.xlsx", "accounts.xlsx").catch(showError) }, t("units.export_xlsx"));
  const report = h("div", { class: "once", hidden: true, id: "import-report" });
  picker.addEventListener("change", async () => {
    const file = picker.files && picker.files[0];
    picker.value = "";
    if (!file) return;
    try {
      const r = await A.upload("/accounts/import", file);
      report.hidden = false;
      report.replaceChildren(
        h("div", {}, t("units.imported", r.created ?? 0, r.updated ?? 0, (r.errors || []).length)),
        (r.errors || []).length
          ? h("ul", {}, r.errors.slice(0, 50).map((e) => h("li", {}, `#${e.row}: ${e.error}`)))
          : null,
        h("button", { class: "small", onclick: () => { report.hidden = true; } }, "×")
      );
      table.reload();
    } catch (err) {
      showError(err);
    }
  });
  view.append(pageTitle(t("nav.units"), importBtn, picker, can("operator") ? [exportCsv, exportXlsx] : null, add), report);
  const table = pagedTable({
    name: "units",
    path: "/units",
    columns: [
      { label: t("field.name"), value: (u) => link(`#/units/${encodeURIComponent(u.id)}`, u.name || u.id) },
      { label: t("field.kind"), value: (u) => t(`kind.${u.kind}`) },
      { label: t("field.civil_code"), value: (u) => u.civil_code || "" },
      { label: t("field.contact"), value: (u) => [u.contact || "", u.phone ? ` ${u.phone}` : ""] },
      { label: t("field.devices"), value: (u) => ratio(u.devices), cls: "num" },
      { label: t("field.channels"), value: (u) => ratio(u.channels), cls: "num" },
      { label: t("field.rate"), value: (u) => rateBar(null, u.channels && u.channels.total ? u.channels : u.devices) },
    ],
    rowAttrs: (u) => ({ "data-unit": u.id }),
    onRow: (u) => { location.hash = `#/units/${encodeURIComponent(u.id)}`; },
  });
  view.append(section(t("nav.units"), table.el));
  live.onDevices.push(debounce(table.reload, 700));
}

async function unitPage(view, unitId) {
  let unit = await A.get(`/units/${encodeURIComponent(unitId)}`);
  const details = h("dl", { class: "details" });
  const showDetails = () => {
    details.replaceChildren(
      ...[
        ["field.id", unit.id],
        ["field.kind", t(`kind.${unit.kind}`)],
        ["field.address", unit.address],
        ["field.contact", unit.contact],
        ["field.phone", unit.phone],
        ["field.civil_code", unit.civil_code],
        ["field.vo_id", unit.vo_id],
        ["field.devices", ratio(unit.devices)],
        ["field.channels", ratio(unit.channels)],
        ["field.created_at", fmtTime(unit.created_at)],
      ].flatMap(([k, v]) => [h("dt", {}, t(k)), h("dd", { "data-field": k.split(".")[1] }, v || "—")])
    );
  };
  showDetails();
  const title = h("h1", {}, unit.name);
  const actions = [];
  if (can("operator")) {
    actions.push(
      h("button", {
        onclick: () =>
          formModal(t("units.edit"), unitFields(), unit, async (v) => {
            unit = await A.patch(`/units/${encodeURIComponent(unit.id)}`, v);
            title.textContent = unit.name;
            showDetails();
            notify(t("common.saved"));
          }),
      }, t("common.edit")),
      h("button", { id: "sheet-csv", onclick: () => A.download(`/units/${encodeURIComponent(unit.id)}/credentials.csv`, `${unit.id}-credentials.csv`).catch(showError) }, t("units.sheet_csv")),
      h("button", { id: "sheet-xlsx", onclick: () => A.download(`/units/${encodeURIComponent(unit.id)}/credentials.xlsx`, `${unit.id}-credentials.xlsx`).catch(showError) }, t("units.sheet_xlsx")),
      h("button", {
        class: "danger",
        onclick: async () => {
          if (!(await confirmBox(t("common.confirm_delete", unit.name)))) return;
          try {
            await A.del(`/units/${encodeURIComponent(unit.id)}`);
          } catch (err) {
            if (err.status !== 409) throw err;
            if (!(await confirmBox(t("units.force_delete")))) return;
            await A.del(`/units/${encodeURIComponent(unit.id)}`, { force: "true" });
          }
          notify(t("common.deleted"));
          location.hash = "#/units";
        },
      }, t("common.delete"))
    );
  }
  view.append(h("div", { class: "page-head" }, h("div", {}, link("#/units", `← ${t("nav.units")}`, { class: "back" }), title), h("div", { class: "actions" }, actions)));
  view.append(section(t("units.details"), details));

  const devices = pagedTable({
    name: "unit-devices",
    limit: 20,
    path: "/devices",
    params: () => ({ unit: unit.id }),
    columns: deviceColumns(),
    rowAttrs: (d) => ({ "data-device": d.id }),
    onRow: (d) => { location.hash = `#/devices/${encodeURIComponent(d.id)}`; },
  });
  view.append(section(t("units.devices"), devices.el));

  const once = h("div", { class: "once", id: "password-once", hidden: true });
  const accounts = pagedTable({
    name: "unit-accounts",
    limit: 20,
    path: "/accounts",
    params: () => ({ unit: unit.id }),
    columns: [
      { label: t("field.id"), value: (a) => devLink(a.device_id), cls: "mono" },
      { label: t("field.name"), value: (a) => a.name || "" },
      { label: t("field.enabled"), value: (a) => (a.enabled ? t("common.yes") : t("common.no")) },
      { label: t("field.created_at"), value: (a) => fmtTime(a.created_at), cls: "time" },
      {
        label: t("common.actions"),
        value: (a) =>
          can("operator")
            ? [
                h("button", { class: "small", onclick: () => A.patch(`/accounts/${encodeURIComponent(a.device_id)}`, { enabled: !a.enabled }).then(() => accounts.reload(), showError) }, a.enabled ? t("units.disable") : t("units.enable")),
                " ",
                h("button", {
                  class: "small danger",
                  onclick: async () => {
                    if (!(await confirmBox(t("common.confirm_delete", a.device_id)))) return;
                    A.del(`/accounts/${encodeURIComponent(a.device_id)}`).then(() => { accounts.reload(); devices.reload(); }, showError);
                  },
                }, t("common.delete")),
              ]
            : "",
      },
    ],
    rowAttrs: (a) => ({ "data-account": a.device_id }),
  });
  const addAccount = can("operator")
    ? h("button", {
        class: "primary",
        id: "add-account",
        onclick: () =>
          formModal(
            t("units.add_account"),
            [
              { name: "name", label: t("field.name"), required: true },
              { name: "device_id", label: t("field.id"), hint: t("units.account_id_hint") },
              { name: "password", label: t("field.password"), type: "password", hint: t("units.password_hint") },
            ],
            {},
            async (v) => {
              const created = await A.post("/accounts", { ...compact(v), unit_id: unit.id });
              if (created.password && !v.password) {
                once.hidden = false;
                once.replaceChildren(
                  h("span", {}, t("units.password_once", created.device_id)),
                  " ",
                  h("code", { class: "secret", "data-device": created.device_id }, created.password),
                  " ",
                  h("button", { class: "small", onclick: () => { once.hidden = true; once.replaceChildren(); } }, "×")
                );
              }
              notify(t("common.saved"));
              accounts.reload();
              devices.reload();
            }
          ),
      }, t("units.add_account"))
    : null;
  view.append(section(t("units.accounts"), h("div", { class: "toolbar" }, addAccount), once, accounts.el));

  const refresh = debounce(async () => {
    devices.reload();
    try {
      unit = await A.get(`/units/${encodeURIComponent(unit.id)}`);
      showDetails();
    } catch (_) {
      // deleted meanwhile: the next navigation tells
    }
  }, 700);
  live.onDevices.push(refresh);
  live.onCatalog.push(refresh);
}

// ---------------------------------------------------------------------------------------------
// Devices.

function deviceColumns() {
  return [
    { label: t("field.id"), value: (d) => devLink(d.id), cls: "mono" },
    { label: t("field.name"), value: (d) => d.name || "" },
    { label: t("field.status"), value: (d) => statusBadge(d.online, d.id) },
    { label: t("field.unit"), value: (d) => (d.unit ? link(`#/units/${encodeURIComponent(d.unit.id)}`, d.unit.name || d.unit.id) : "—") },
    { label: t("field.host"), value: (d) => (d.host ? `${d.host}:${d.port} ${d.transport || ""}` : "—"), cls: "mono" },
    { label: t("field.channels"), value: (d) => ratio(d.channels), cls: "num" },
    { label: t("field.last_keepalive"), value: (d) => fmtTime(d.last_keepalive), cls: "time" },
  ];
}

async function devicesPage(view) {
  view.append(pageTitle(t("nav.devices")));
  const filter = h(
    "select",
    { class: "filter", "aria-label": t("devices.filter_online") },
    h("option", { value: "" }, `${t("devices.filter_online")}: ${t("common.all")}`),
    h("option", { value: "true" }, t("common.online")),
    h("option", { value: "false" }, t("common.offline"))
  );
  const table = pagedTable({
    name: "devices",
    path: "/devices",
    params: () => ({ online: filter.value }),
    tools: [filter],
    columns: deviceColumns(),
    rowAttrs: (d) => ({ "data-device": d.id }),
    onRow: (d) => { location.hash = `#/devices/${encodeURIComponent(d.id)}`; },
  });
  filter.addEventListener("change", () => { table.state.offset = 0; table.reload(); });
  view.append(section(t("nav.devices"), table.el));
  live.onDevices.push(debounce(table.reload, 700));
}

function kv(obj, skip = []) {
  const dl = h("dl", { class: "details" });
  for (const [k, v] of Object.entries(obj || {})) {
    if (skip.includes(k)) continue;
    let text;
    if (v === null || v === undefined || v === "") text = "—";
    else if (typeof v === "object") text = h("code", { class: "json" }, JSON.stringify(v));
    else text = String(v);
    dl.append(h("dt", {}, k), h("dd", {}, text));
  }
  return dl;
}

async function devicePage(view, deviceId) {
  const path = `/devices/${encodeURIComponent(deviceId)}`;
  let device = await A.get(path);
  const badge = statusBadge(device.online, device.id);
  const details = h("dl", { class: "details" });
  const showDetails = () => {
    const rows = [
      ["field.id", device.id],
      ["field.name", device.name],
      ["field.unit", device.unit ? link(`#/units/${encodeURIComponent(device.unit.id)}`, device.unit.name || device.unit.id) : "—"],
      ["field.host", device.host ? `${device.host}:${device.port}` : "—"],
      ["field.transport", device.transport],
      ["field.charset", device.charset],
      ["field.manufacturer", device.manufacturer],
      ["field.model", device.model],
      ["field.firmware", device.firmware],
      ["field.user_agent", device.user_agent],
      ["field.gb_version", device.gb_version],
      ["field.channels", ratio(device.channels)],
      ["field.last_keepalive", fmtTime(device.last_keepalive)],
      ["field.registered_at", fmtTime(device.registered_at)],
      ["field.expires_at", fmtTime(device.expires_at)],
    ];
    details.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, t(k)), h("dd", { "data-field": k.split(".")[1] }, v === undefined || v === null || v === "" ? "—" : v)]));
  };
  showDetails();
  const result = h("div", { class: "result", id: "device-result" });
  const run = (fn) => async () => {
    try {
      await fn();
    } catch (err) {
      showError(err);
    }
  };
  const actions = can("operator")
    ? [
        h("button", { id: "btn-sync", onclick: run(async () => { await A.post(`${path}/sync`); notify(t("device.synced")); }) }, t("device.sync")),
        h("button", { id: "btn-info", onclick: run(async () => { result.replaceChildren(t("common.loading")); const r = await A.post(`${path}/info`); result.replaceChildren(h("h3", {}, t("device.info")), kv(r)); }) }, t("device.info")),
        h("button", { id: "btn-status", onclick: run(async () => { result.replaceChildren(t("common.loading")); const r = await A.post(`${path}/status`); result.replaceChildren(h("h3", {}, t("device.status")), kv(r)); }) }, t("device.status")),
        h("button", {
          class: "danger",
          onclick: run(async () => {
            if (!(await confirmBox(t("device.confirm_teleboot", device.id)))) return;
            await A.post(`${path}/teleboot`);
            notify(t("common.done"));
          }),
        }, t("device.teleboot")),
      ]
    : [];
  const playAll = h("button", { id: "btn-play-all", class: "play" }, `▶ ${t("preview.play_all")}`);
  view.append(
    h("div", { class: "page-head" },
      h("div", {}, link("#/devices", `← ${t("nav.devices")}`, { class: "back" }), h("h1", {}, device.name || device.id, " ", badge)),
      h("div", { class: "actions" }, playAll, actions))
  );
  view.append(section(t("device.details"), details, result));

  // Channels, and the tools for the picked one.
  let picked = null;
  const tools = h("div", { class: "channel-tools", id: "channel-tools" }, h("p", { class: "muted" }, t("device.pick_channel")));
  const channels = pagedTable({
    name: "channels",
    path: `${path}/channels`,
    columns: [
      { label: "", value: (c) => (P.canPreview(c.id) ? playButton(c) : ""), cls: "play-cell" },
      { label: t("field.id"), value: (c) => c.id, cls: "mono" },
      { label: t("field.name"), value: (c) => c.name || "" },
      { label: t("field.status"), value: (c) => h("span", { class: `badge ${c.online ? "on" : "off"}` }, c.online ? t("common.online") : t("common.offline")) },
      { label: t("field.manufacturer"), value: (c) => c.manufacturer || "" },
      { label: t("field.ptz_type"), value: (c) => (c.ptz_type ?? "—") },
      { label: t("field.address"), value: (c) => c.address || "" },
    ],
    rowAttrs: (c) => ({ "data-channel": c.id, class: picked && picked.id === c.id ? "picked" : "" }),
    onRow: (c) => {
      picked = c;
      for (const tr of channels.el.querySelectorAll("tr[data-channel]")) tr.classList.toggle("picked", tr.dataset.channel === c.id);
      tools.replaceChildren(...channelTools(device, c));
    },
  });
  view.append(h("div", { class: "cols wide-left" }, section(t("device.channels"), channels.el), section(t("device.channel"), tools)));
  // The device's own play button: the online channels of the list's page, as many as the grid
  // takes (a 16-channel NVR fills it).
  playAll.addEventListener("click", () => {
    const online = channels.state.items.filter((c) => c.online && P.canPreview(c.id));
    if (!online.length) notify(t("preview.none_online"), "error");
    for (const c of online) if (!P.play(c)) break;
  });

  const refresh = debounce(async () => {
    try {
      device = await A.get(path);
      setBadge(badge, device.online);
      showDetails();
    } catch (_) {
      // gone: leave the page as it is
    }
    channels.reload();
  }, 500);
  live.onDevices.push((data) => {
    if (data.dropped || (data.changes || []).some((c) => c.id === device.id)) refresh();
  });
  live.onCatalog.push((data) => {
    if (data.dropped || (data.devices || []).includes(device.id)) refresh();
  });
}

function channelTools(device, channel) {
  const base = `/devices/${encodeURIComponent(device.id)}/channels/${encodeURIComponent(channel.id)}`;
  const out = [h("h3", { class: "picked-name" }, `${channel.name || ""} `, h("code", {}, channel.id))];
  if (P.canPreview(channel.id)) out.push(h("div", { class: "toolbar" }, playButton(channel, true)));
  if (can("operator")) {
    // PTZ: a move while the button is held, stop on release. Commands are chained so a stop can
    // never overtake the move it ends.
    const speed = h("input", { type: "range", min: 1, max: 255, value: 128, id: "ptz-speed" });
    let chain = Promise.resolve();
    const send = (command) => {
      chain = chain.then(() => A.post(`${base}/ptz`, { command, speed: Number(speed.value) }).catch(showError));
      return chain;
    };
    const btn = (command, label, cls = "") => {
      const b = h("button", { class: `ptz ${cls}`, "data-ptz": command, title: t(`ptz.${command}`), "aria-label": t(`ptz.${command}`) }, label);
      let held = false;
      b.addEventListener("pointerdown", (ev) => {
        ev.preventDefault();
        held = true;
        send(command);
      });
      const release = () => {
        if (!held) return;
        held = false;
        send("stop");
      };
      b.addEventListener("pointerup", release);
      b.addEventListener("pointerleave", release);
      b.addEventListener("pointercancel", release);
      b.addEventListener("keydown", (ev) => {
        if ((ev.key === " " || ev.key === "Enter") && !held) {
          ev.preventDefault();
          held = true;
          send(command);
        }
      });
      b.addEventListener("keyup", (ev) => { if (ev.key === " " || ev.key === "Enter") release(); });
      return b;
    };
    const pad = h("div", { class: "ptz-pad" },
      btn("upleft", "↖"), btn("up", "▲"), btn("upright", "↗"),
      btn("left", "◀"),
      h("button", { class: "ptz stop", "data-ptz": "stop", onclick: () => send("stop") }, t("ptz.stop")),
      btn("right", "▶"),
      btn("downleft", "↙"), btn("down", "▼"), btn("downright", "↘"));
    const zoom = h("div", { class: "ptz-zoom" }, btn("zoomin", `＋ ${t("ptz.zoomin")}`, "wide"), btn("zoomout", `－ ${t("ptz.zoomout")}`, "wide"));
    out.push(h("h4", {}, t("ptz.title")), h("div", { class: "ptz-box" }, pad, zoom), h("label", { class: "inline" }, t("ptz.speed"), " ", speed));

    const index = h("input", { type: "number", min: 1, max: 255, value: 1, class: "short", id: "preset-index" });
    const preset = (action) => h("button", {
      class: "small",
      "data-preset": action,
      onclick: async () => {
        try {
          await A.post(`${base}/preset`, { action, index: Number(index.value) });
          notify(t("common.done"));
        } catch (err) {
          showError(err);
        }
      },
    }, t(`preset.${action}`));
    out.push(h("h4", {}, t("preset.title")), h("div", { class: "toolbar" }, h("label", { class: "inline" }, t("preset.index"), " ", index), preset("goto"), preset("set"), preset("delete")));
  }

  // Record search: the last day by default.
  const local = (d) => {
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
  };
  const now = new Date();
  const start = h("input", { type: "datetime-local", value: local(new Date(now.getTime() - 86400000)), id: "rec-start" });
  const end = h("input", { type: "datetime-local", value: local(now), id: "rec-end" });
  const results = h("div", { class: "records", id: "records" });
  const search = h("button", {
    class: "small primary",
    id: "rec-search",
    onclick: async () => {
      results.replaceChildren(t("common.loading"));
      try {
        const r = await A.get(`${base}/records`, {
          start: Math.floor(new Date(start.value).getTime() / 1000),
          end: Math.floor(new Date(end.value).getTime() / 1000),
        });
        const items = r.items || [];
        results.replaceChildren(
          items.length
            ? h("table", { class: "grid compact" },
                h("thead", {}, h("tr", {}, h("th", {}, t("records.start")), h("th", {}, t("records.end")), h("th", {}, t("field.name")), h("th", {}, t("records.type")), h("th", {}, t("records.file")))),
                h("tbody", {}, items.map((x) => h("tr", {}, h("td", {}, fmtTime(x.start)), h("td", {}, fmtTime(x.end)), h("td", {}, x.name || ""), h("td", {}, x.type || ""), h("td", { class: "mono" }, x.file_path || "")))))
            : h("p", { class: "muted" }, t("common.none")),
          h("p", { class: "muted" }, t("records.total", r.total ?? items.length))
        );
      } catch (err) {
        results.replaceChildren(h("p", { class: "muted" }, err.message));
        showError(err);
      }
    },
  }, t("records.search"));
  out.push(h("h4", {}, t("records.title")), h("div", { class: "toolbar" }, h("label", { class: "inline" }, t("records.start"), " ", start), h("label", { class: "inline" }, t("records.end"), " ", end), search), results);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The tree, loaded by parent. Each level asks /tree?parent=<id> a page at a time; "load more"
// asks the next page.

async function treePage(view) {
  view.append(pageTitle(t("nav.tree")));
  const root = h("ul", { class: "tree", id: "tree" });
  view.append(section(t("tree.root"), root));
  await loadLevel(root, "", 0);
}

async function loadLevel(ul, parent, offset) {
  const limit = 100;
  const data = await A.get("/tree", { parent, offset, limit });
  const more = ul.querySelector(":scope > li.more");
  if (more) more.remove();
  for (const node of data.items || []) ul.append(treeNode(node));
  const shown = offset + (data.items || []).length;
  if (shown < (data.total || 0)) {
    const btn = h("button", { class: "small", onclick: () => loadLevel(ul, parent, shown).catch(showError) }, `${t("common.more")} (${shown}/${data.total})`);
    ul.append(h("li", { class: "more" }, btn));
  }
  if (!ul.children.length) ul.append(h("li", { class: "muted" }, t("common.none")));
}


function treeNode(node) {
  const li = h("li", { "data-node": node.id, "data-kind": node.kind });
  const children = h("ul", { hidden: true });
  let loaded = false;
  const toggle = h("button", { class: "twisty", "aria-expanded": "false", disabled: !node.has_children }, node.has_children ? "▸" : "·");
  const name = node.id === "_unassigned" ? t("tree.unassigned") : node.name || node.id;
  const label = h("span", { class: "node-label" }, h("span", { class: `icon k-${node.kind}`, title: t(`tree.${node.kind}`) }, t(`tree.${node.kind}`).slice(0, getLang() === "zh" ? 1 : 2)), " ",
    node.kind === "device" ? devLink(node.id) : node.kind === "unit" && node.id !== "_unassigned" ? link(`#/units/${encodeURIComponent(node.id)}`, name) : name);
  if (node.kind === "device" && node.id !== name) label.append(" ", h("span", { class: "muted" }, name));
  if (node.kind === "channel") {
    label.append(" ", h("code", { class: "muted" }, node.id));
    if (P.canPreview(node.id)) label.append(" ", playButton(node));
  }
  li.append(toggle, label);
  if (node.kind === "device") li.append(" ", statusBadge(node.online, node.id));
  else if (node.kind === "channel") li.append(" ", h("span", { class: `badge ${node.online ? "on" : "off"}` }, node.online ? t("common.online") : t("common.offline")));
  if (node.counts && node.kind !== "channel") li.append(" ", h("span", { class: "counts" }, ratio(node.counts)));
  li.append(children);
  toggle.addEventListener("click", async () => {
    const open = children.hidden;
    children.hidden = !open;
    toggle.textContent = open ? "▾" : "▸";
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
    if (open && !loaded) {
      loaded = true;
      children.append(h("li", { class: "muted" }, t("common.loading")));
      try {
        children.replaceChildren();
        await loadLevel(children, node.id, 0);
      } catch (err) {
        loaded = false;
        children.replaceChildren(h("li", { class: "muted" }, err.message));
      }
    }
  });
  return li;
}

// ---------------------------------------------------------------------------------------------
// Uppers and what each is shared.

async function uppersPage(view) {
  const add = can("admin")
    ? h("button", {
        class: "primary",
        onclick: () =>
          formModal(t("uppers.new"), upperFields(true), { transport: "udp", port: 5060 }, async (v) => {
            const u = await A.post("/uppers", compact(v));
            location.hash = `#/uppers/${encodeURIComponent(u.id)}`;
          }),
      }, t("uppers.new"))
    : null;
  view.append(pageTitle(t("nav.uppers"), add));
  const table = pagedTable({
    name: "uppers",
    path: "/uppers",
    columns: [
      { label: t("field.id"), value: (u) => link(`#/uppers/${encodeURIComponent(u.id)}`, u.id), cls: "mono" },
      { label: t("field.name"), value: (u) => u.name || "" },
      { label: t("field.host"), value: (u) => `${u.host}:${u.port} ${u.transport || ""}`, cls: "mono" },
      { label: t("field.state"), value: (u) => stateBadge(u.state) },
      { label: t("field.last_keepalive"), value: (u) => fmtTime(u.last_keepalive), cls: "time" },
      { label: t("field.subscriptions"), value: (u) => (u.subscriptions || []).map((x) => x.kind).join(", ") || "—" },
      { label: t("field.share"), value: (u) => shareSummary(u.share) },
    ],
    rowAttrs: (u) => ({ "data-upper": u.id }),
    onRow: (u) => { location.hash = `#/uppers/${encodeURIComponent(u.id)}`; },
  });
  view.append(section(t("nav.uppers"), table.el));
  page.timers.push(setInterval(table.reload, 5000)); // registration states move
}

function shareSummary(share) {
  if (!share) return "—";
  if (share.all) return t("common.all");
  const n = (x) => (x || []).length;
  return `${t("nav.units")} ${n(share.units)} · ${t("nav.devices")} ${n(share.devices)} · ${t("device.channels")} ${n(share.channels)}`;
}

function upperFields(creating) {
  const f = [];
  if (creating) f.push({ name: "id", label: t("field.id"), required: true });
  f.push(
    { name: "name", label: t("field.name") },
    { name: "domain", label: t("field.domain") },
    { name: "host", label: t("field.host"), required: creating },
    { name: "port", label: t("field.port"), type: "number" },
    { name: "transport", label: t("field.transport"), type: "select", options: [["udp", "UDP"], ["tcp", "TCP"]] },
    { name: "password", label: t("uppers.password"), type: "password" }
  );
  if (!creating) f.push({ name: "enabled", label: t("field.enabled"), type: "checkbox" });
  return f;
}

async function upperPage(view, upperId) {
  const path = `/uppers/${encodeURIComponent(upperId)}`;
  let upper = await A.get(path);
  const head = h("h1", {}, upper.name || upper.id, " ", stateBadge(upper.state));
  const actions = [];
  if (can("admin")) {
    actions.push(
      h("button", {
        onclick: () =>
          formModal(t("common.edit"), upperFields(false), upper, async (v) => {
            upper = await A.patch(path, compact(v));
            route();
          }),
      }, t("common.edit")),
      h("button", {
        class: "danger",
        onclick: async () => {
          if (!(await confirmBox(t("common.confirm_delete", upper.id)))) return;
          await A.del(path).catch(showError);
          location.hash = "#/uppers";
        },
      }, t("common.delete"))
    );
  }
  view.append(h("div", { class: "page-head" }, h("div", {}, link("#/uppers", `← ${t("nav.uppers")}`, { class: "back" }), head), h("div", { class: "actions" }, actions)));
  const rows = [
    ["field.id", upper.id],
    ["field.name", upper.name],
    ["field.domain", upper.domain],
    ["field.host", `${upper.host}:${upper.port} ${upper.transport || ""}`],
    ["field.enabled", upper.enabled ? t("common.yes") : t("common.no")],
    ["field.gb_version", upper.gb_version],
    ["field.charset", upper.charset],
    ["uppers.id_policy", upper.id_policy],
    ["uppers.register_expires", upper.register_expires],
    ["uppers.keepalive_interval", upper.keepalive_interval],
    ["field.last_keepalive", fmtTime(upper.last_keepalive)],
    ["field.subscriptions", (upper.subscriptions || []).map((s) => `${s.kind} (${fmtTime(s.expires_at)})`).join(", ")],
  ];
  view.append(section(t("uppers.details"), h("dl", { class: "details" },
    rows.flatMap(([k, v]) => [h("dt", {}, t(k)), h("dd", {}, v === undefined || v === null || v === "" ? "—" : String(v))]))));

  // Sharing: everything, or picked units, devices and channels.
  const share = await A.get(`${path}/share`);
  const all = h("input", { type: "checkbox", id: "share-all", checked: Boolean(share.all) });
  const pickers = {
    units: idPicker("units", "/units", share.units || [], (u) => `${u.name || ""}`,
      (id) => A.get(`/units/${encodeURIComponent(id)}`).then((u) => u.name || id)),
    devices: idPicker("devices", "/devices", share.devices || [], (d) => `${d.name || ""}`),
    channels: idPicker("channels", "/channels", share.channels || [], (c) => `${c.name || ""} @ ${c.device_id || ""}`),
  };
  const syncAll = () => {
    for (const p of Object.values(pickers)) p.el.classList.toggle("dim", all.checked);
  };
  all.addEventListener("change", syncAll);
  syncAll();
  const save = h("button", {
    class: "primary",
    id: "share-save",
    disabled: !can("operator"),
    onclick: async () => {
      try {
        await A.put(`${path}/share`, {
          all: all.checked,
          units: pickers.units.ids(),
          devices: pickers.devices.ids(),
          channels: pickers.channels.ids(),
        });
        notify(t("common.saved"));
      } catch (err) {
        showError(err);
      }
    },
  }, t("common.save"));
  view.append(section(t("uppers.share"),
    h("label", { class: "check" }, all, " ", t("uppers.share_all")),
    h("div", { class: "cols three" },
      h("div", {}, h("h4", {}, t("uppers.share_units")), pickers.units.el),
      h("div", {}, h("h4", {}, t("uppers.share_devices")), pickers.devices.el),
      h("div", {}, h("h4", {}, t("uppers.share_channels")), pickers.channels.el)),
    h("div", { class: "buttons" }, save)));

  const map = pagedTable({
    name: "id-map",
    path: `${path}/id-map`,
    search: false,
    columns: [
      { label: "local_id", value: (m) => m.local_id, cls: "mono" },
      { label: "upper_id", value: (m) => m.upper_id, cls: "mono" },
    ],
  });
  view.append(section(t("uppers.id_map"), map.el));
}

// Picked IDs as removable chips, and a server search (a few results at a time) to add more.
function idPicker(name, path, initial, describe, resolve) {
  const picked = new Set(initial);
  const labels = new Map(); // id -> a name to show on its chip
  const chips = h("div", { class: "chips" });
  const results = h("ul", { class: "picker-results" });
  const input = h("input", { type: "search", placeholder: t("common.search"), "data-picker": name });
  const draw = () => {
    chips.replaceChildren(
      ...[...picked].map((id) => h("span", { class: "chip", "data-id": id, title: id }, labels.get(id) || id, h("button", { class: "x", title: t("common.delete"), onclick: () => { picked.delete(id); draw(); } }, "×")))
    );
    if (!picked.size) chips.append(h("span", { class: "muted" }, "—"));
  };
  const search = debounce(async () => {
    const q = input.value.trim();
    if (!q) {
      results.replaceChildren();
      return;
    }
    try {
      const data = await A.get(path, { q, limit: 8 });
      results.replaceChildren(
        ...(data.items || []).map((item) =>
          h("li", {}, h("button", {
            class: "small",
            "data-add": item.id,
            onclick: () => {
              picked.add(item.id);
              if (resolve) labels.set(item.id, item.name || item.id);
              draw();
            },
          }, "+"), " ", h("code", {}, item.id), " ", describe(item)))
      );
      if (!(data.items || []).length) results.append(h("li", { class: "muted" }, t("common.none")));
    } catch (err) {
      results.replaceChildren(h("li", { class: "muted" }, err.message));
    }
  }, 250);
  input.addEventListener("input", search);
  draw();
  if (resolve) {
    // Units have short server-made IDs: show their names (a few lookups, the first 50 only).
    Promise.all([...picked].slice(0, 50).map((id) => resolve(id).then((label) => labels.set(id, label), () => {}))).then(draw);
  }
  return { el: h("div", { class: "picker", "data-picker-box": name }, chips, input, results), ids: () => [...picked] };
}

// ---------------------------------------------------------------------------------------------
// Sessions, alarms, the audit log.

async function sessionsPage(view) {
  const add = can("operator")
    ? h("button", {
        class: "primary",
        id: "new-session",
        onclick: () =>
          formModal(t("sessions.new"), [
            { name: "channel_id", label: t("sessions.channel"), required: true },
            { name: "host", label: t("sessions.to_host"), required: true, value: "127.0.0.1" },
            { name: "port", label: t("sessions.to_port"), type: "number", required: true },
            { name: "transport", label: t("field.transport"), type: "select", options: [["udp", "UDP"], ["tcp", "TCP"]] },
          ], {}, async (v) => {
            await A.post("/sessions", v);
            notify(t("common.saved"));
            table.reload();
          }),
      }, t("sessions.new"))
    : null;
  view.append(pageTitle(t("nav.sessions"), add));
  const leg = (l) => (l ? `${l.host}:${l.port} ${l.transport || ""}${l.ssrc ? ` ssrc=${l.ssrc}` : ""}` : "—");
  const table = pagedTable({
    name: "sessions",
    path: "/sessions",
    search: false,
    rowAttrs: (x) => ({ "data-session": x.id, "data-channel": x.channel_id, "data-bytes": x.bytes ?? 0 }),
    columns: [
      { label: "ID", value: (s) => s.id, cls: "mono" },
      { label: t("sessions.kind"), value: (s) => s.kind },
      { label: t("sessions.channel"), value: (s) => [s.channel_id || "", s.device_id ? h("div", { class: "muted" }, devLink(s.device_id)) : ""], cls: "mono" },
      { label: t("sessions.device_leg"), value: (s) => leg(s.device_leg), cls: "mono" },
      { label: t("sessions.outputs"), value: (s) => (s.outputs || []).map(leg).join(", ") || (s.upper_id ? s.upper_id : "—"), cls: "mono" },
      { label: t("sessions.bitrate"), value: (s) => fmtBitrate(s.bitrate_bps), cls: "num" },
      { label: t("sessions.bytes"), value: (s) => fmtBytes(s.bytes), cls: "num" },
      { label: t("sessions.lost"), value: (s) => String(s.packets_lost ?? 0), cls: "num" },
      { label: t("sessions.started"), value: (s) => fmtTime(s.started_at), cls: "time" },
      {
        label: "",
        value: (s) =>
          can("operator")
            ? h("button", {
                class: "small danger",
                onclick: async () => {
                  if (!(await confirmBox(`${t("sessions.stop")} ${s.id}?`))) return;
                  A.del(`/sessions/${encodeURIComponent(s.id)}`).then(() => table.reload(), showError);
                },
              }, t("sessions.stop"))
            : "",
      },
    ],
  });
  view.append(section(t("nav.sessions"), table.el));
  live.onSessions.push(debounce(table.reload, 300));
  page.timers.push(setInterval(table.reload, 2000)); // bitrates move
}

async function alarmsPage(view) {
  view.append(pageTitle(t("nav.alarms")));
  const device = h("input", { type: "search", placeholder: t("alarms.device"), class: "filter" });
  const table = pagedTable({
    name: "alarms",
    path: "/alarms",
    search: false,
    rowAttrs: (a) => ({ "data-alarm": a.id, "data-device": a.device_id }),
    tools: [device],
    params: () => ({ device: device.value.trim() }),
    columns: [
      { label: t("alarms.time"), value: (a) => fmtTime(a.time ?? a.received_at), cls: "time" },
      { label: t("alarms.device"), value: (a) => devLink(a.device_id), cls: "mono" },
      { label: t("alarms.channel"), value: (a) => a.channel_id || "", cls: "mono" },
      { label: t("alarms.priority"), value: (a) => String(a.priority ?? "") },
      { label: t("alarms.method"), value: (a) => String(a.method ?? "") },
      { label: t("alarms.type"), value: (a) => String(a.type ?? "") },
      { label: t("alarms.description"), value: (a) => a.description || "" },
    ],
  });
  device.addEventListener("input", debounce(() => { table.state.offset = 0; table.reload(); }, 300));
  view.append(section(t("nav.alarms"), table.el));
  live.onAlarm.push(debounce(() => { if (table.state.offset === 0) table.reload(); }, 300));
}

async function auditPage(view) {
  view.append(pageTitle(t("nav.audit")));
  const who = h("input", { type: "search", placeholder: t("audit.who"), class: "filter" });
  const action = h("input", { type: "search", placeholder: t("audit.action"), class: "filter" });
  const table = pagedTable({
    name: "audit",
    path: "/audit",
    search: false,
    tools: [who, action],
    params: () => ({ who: who.value.trim(), action: action.value.trim() }),
    columns: [
      { label: t("audit.at"), value: (a) => fmtTime(a.at), cls: "time" },
      { label: t("audit.who"), value: (a) => `${a.who || ""}${a.role ? ` (${a.role})` : ""}` },
      { label: t("audit.action"), value: (a) => a.action || "", cls: "mono wrap" },
      { label: t("audit.target"), value: (a) => (typeof a.target === "object" && a.target ? JSON.stringify(a.target) : a.target || ""), cls: "mono wrap" },
      { label: t("audit.detail"), value: (a) => (typeof a.detail === "object" && a.detail ? JSON.stringify(a.detail) : a.detail || ""), cls: "wrap" },
      { label: t("audit.outcome"), value: (a) => String(a.outcome ?? "") },
      { label: t("audit.source"), value: (a) => a.source || "", cls: "mono" },
    ],
  });
  const reload = debounce(() => { table.state.offset = 0; table.reload(); }, 300);
  who.addEventListener("input", reload);
  action.addEventListener("input", reload);
  view.append(section(t("nav.audit"), table.el));
}

// ---------------------------------------------------------------------------------------------
// Users, tokens and the registration policy (admin).

const ROLE_OPTIONS = () => ["viewer", "operator", "admin"].map((r) => [r, r]);

async function usersPage(view) {
  view.append(pageTitle(t("nav.users")));
  const once = h("div", { class: "once", hidden: true, id: "token-once" });
  const users = pagedTable({
    name: "users",
    path: "/users",
    search: false,
    columns: [
      { label: t("login.username"), value: (u) => u.username },
      { label: t("field.role"), value: (u) => u.role },
      { label: t("users.disabled"), value: (u) => (u.disabled ? t("common.yes") : t("common.no")) },
      { label: t("field.created_at"), value: (u) => fmtTime(u.created_at), cls: "time" },
      {
        label: t("common.actions"),
        value: (u) => [
          h("button", {
            class: "small",
            onclick: () =>
              formModal(`${t("common.edit")} ${u.username}`, [
                { name: "role", label: t("field.role"), type: "select", options: ROLE_OPTIONS() },
                { name: "password", label: t("users.new_password"), type: "password" },
                { name: "disabled", label: t("users.disabled"), type: "checkbox" },
              ], u, async (v) => {
                await A.patch(`/users/${encodeURIComponent(u.username)}`, compact(v));
                notify(t("common.saved"));
                users.reload();
              }),
          }, t("common.edit")),
          " ",
          h("button", {
            class: "small danger",
            onclick: async () => {
              if (!(await confirmBox(t("common.confirm_delete", u.username)))) return;
              A.del(`/users/${encodeURIComponent(u.username)}`).then(() => users.reload(), showError);
            },
          }, t("common.delete")),
        ],
      },
    ],
  });
  const newUser = h("button", {
    class: "primary",
    onclick: () =>
      formModal(t("users.new"), [
        { name: "username", label: t("login.username"), required: true },
        { name: "password", label: t("login.password"), type: "password", required: true },
        { name: "role", label: t("field.role"), type: "select", options: ROLE_OPTIONS() },
      ], { role: "viewer" }, async (v) => {
        await A.post("/users", v);
        notify(t("common.saved"));
        users.reload();
      }),
  }, t("users.new"));
  view.append(section(t("users.title"), h("div", { class: "toolbar" }, newUser), users.el));

  const tokens = pagedTable({
    name: "tokens",
    path: "/tokens",
    search: false,
    columns: [
      { label: t("field.name"), value: (x) => x.name },
      { label: t("field.role"), value: (x) => x.role },
      { label: t("tokens.source"), value: (x) => x.source || "" },
      { label: t("field.created_at"), value: (x) => fmtTime(x.created_at), cls: "time" },
      {
        label: t("common.actions"),
        value: (x) =>
          x.source === "config"
            ? ""
            : h("button", {
                class: "small danger",
                onclick: async () => {
                  if (!(await confirmBox(t("common.confirm_delete", x.name)))) return;
                  A.del(`/tokens/${encodeURIComponent(x.name)}`).then(() => tokens.reload(), showError);
                },
              }, t("common.delete")),
      },
    ],
  });
  const newToken = h("button", {
    class: "primary",
    onclick: () =>
      formModal(t("tokens.new"), [
        { name: "name", label: t("field.name"), required: true },
        { name: "role", label: t("field.role"), type: "select", options: ROLE_OPTIONS() },
      ], { role: "viewer" }, async (v) => {
        const made = await A.post("/tokens", v);
        once.hidden = false;
        once.replaceChildren(h("span", {}, t("tokens.once", made.name)), " ", h("code", { class: "secret" }, made.token), " ",
          h("button", { class: "small", onclick: () => { once.hidden = true; once.replaceChildren(); } }, "×"));
        tokens.reload();
      }),
  }, t("tokens.new"));
  view.append(section(t("tokens.title"), h("div", { class: "toolbar" }, newToken), once, tokens.el));

  const policy = h("select", { id: "unknown-devices" },
    h("option", { value: "accept" }, t("settings.accept")), h("option", { value: "reject" }, t("settings.reject")));
  const policyBox = section(t("settings.title"), h("label", { class: "inline" }, t("settings.unknown"), " ", policy));
  view.append(policyBox);
  try {
    const s = await A.get("/settings/registration");
    policy.value = s.unknown_devices;
  } catch (err) {
    policy.disabled = true;
    policyBox.append(h("p", { class: "muted" }, err.message));
  }
  policy.addEventListener("change", async () => {
    try {
      await A.put("/settings/registration", { unknown_devices: policy.value });
      notify(t("common.saved"));
    } catch (err) {
      showError(err);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The frame: login, header, navigation, language.

function showLogin(message) {
  disconnectEvents();
  resetPage();
  P.closeAll();
  document.body.classList.add("logged-out");
  $("#app").hidden = true;
  const box = $("#login");
  box.hidden = false;
  box.replaceChildren();
  const user = h("input", { name: "username", id: "login-username", autocomplete: "username", required: true });
  const pass = h("input", { name: "password", id: "login-password", type: "password", autocomplete: "current-password", required: true });
  const error = h("div", { class: "form-error", role: "alert", id: "login-error" }, message || "");
  const form = h("form", { class: "form login-form" },
    h("h1", {}, t("app.title")),
    h("label", {}, h("span", {}, t("login.username")), user),
    h("label", {}, h("span", {}, t("login.password")), pass),
    error,
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", id: "login-submit" }, t("login.submit")), langButton()));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    try {
      const r = await A.post("/auth/login", { username: user.value, password: pass.value });
      A.setSession({ token: r.token, username: r.username, role: r.role, expires_at: r.expires_at });
      start();
    } catch (err) {
      error.textContent = `${t("login.failed")}: ${err.message}`;
    }
  });
  box.append(form);
  user.focus();
}

function langButton() {
  return h("button", {
    type: "button",
    class: "lang",
    id: "lang-switch",
    onclick: () => {
      setLang(getLang() === "zh" ? "en" : "zh");
      document.title = t("app.title");
      if (A.getSession()) {
        drawFrame();
        route();
      } else {
        showLogin();
      }
    },
  }, t("lang.switch"));
}

function drawFrame() {
  const s = A.getSession();
  const nav = $("#nav");
  nav.replaceChildren(
    ...NAV.filter(([, , role]) => !role || can(role)).map(([key, href]) => h("a", { href, "data-nav": key }, t(`nav.${key}`)))
  );
  $("#brand").textContent = t("app.brand");
  const user = $("#user");
  user.replaceChildren(
    h("span", { id: "live", class: "live off", "data-state": "off" }, t("live.off")),
    h("span", { class: "who", id: "who" }, `${s.username} · ${s.role}`),
    langButton(),
    h("button", { id: "logout", onclick: logout }, t("logout"))
  );
  setLive(Boolean(events && events.readyState === 1));
  P.relabel();
}

async function logout() {
  await P.closeAll();
  try {
    await A.post("/auth/logout");
  } catch (_) {
    // gone already: fine
  }
  A.setSession(null);
  showLogin();
}

function start() {
  $("#login").hidden = true;
  $("#login").replaceChildren();
  $("#app").hidden = false;
  document.body.classList.remove("logged-out");
  drawFrame();
  connectEvents();
  route();
}

A.whenUnauthorized(() => {
  if (!A.getSession()) return;
  A.setSession(null);
  showLogin();
});

window.addEventListener("hashchange", route);
setLang(getLang());
document.title = t("app.title");
if (A.getSession()) start();
else showLogin();
