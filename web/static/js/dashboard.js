// Giao Ban — the live dashboard: the site tree (/dashboard) and one room's sites
// (/dashboard/rooms/<slug>).
//
// The page is a shell rendered by the node; this module fetches its JSON (the URL is in
// #dashboard[data-url]) at once and then every POLL_MS, and draws it. Data only ever reaches
// the page through textContent and attributes, never innerHTML: site and room names are typed
// by people. When a fetch fails the last figures stay and a warning says since when they are
// not updated. Shapes: server/dashboard.py (build_dashboard, room_sites_state).

import { getLang, onLangChange, setText, t } from "./i18n.js";

const POLL_MS = 2000;
const FETCH_TIMEOUT_MS = 8000;
// Levels whose <details> start open: the top of the tree, so a province's communes show.
const OPEN_LEVELS = new Set(["central", "province"]);

const root = document.getElementById("dashboard");

/** A new element with a class, text and attributes (all set as text, never parsed). */
function el(tag, { cls, text, attrs } = {}) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = String(text);
  if (attrs) for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

/** An element whose text is the i18n string `key` (kept in step with the language switch). */
function tel(tag, key, args, opts = {}) {
  const node = el(tag, opts);
  setText(node, key, args);
  return node;
}

function locale() {
  return getLang() === "vi" ? "vi-VN" : "en-GB";
}

function roomHref(slug) {
  return "/dashboard/rooms/" + encodeURIComponent(slug);
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString(locale());
}

// ------------------------------------------------------------------ polling

/** Fetch `url` every POLL_MS (never two at once) and call `draw(data)`; keep `state` current. */
function poll(url, draw) {
  const state = { last: null, okAt: null };
  const stale = document.getElementById("dash-stale");
  const updated = document.getElementById("dash-updated");

  function showStale(signedOut) {
    stale.hidden = false;
    if (signedOut) setText(stale, "dashboard.signed_out");
    else if (state.okAt === null) setText(stale, "dashboard.stale_never");
    else setText(stale, "dashboard.stale", { time: state.okAt.toLocaleTimeString(locale()) });
    root.dataset.stale = "true";
  }

  async function once() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
        signal: abort.signal,
      });
      if (!response.ok) {
        showStale(response.status === 401);
        return;
      }
      const data = await response.json();
      state.last = data;
      state.okAt = new Date();
      draw(data);
      stale.hidden = true;
      root.dataset.stale = "false";
      setText(updated, "dashboard.updated", { time: state.okAt.toLocaleTimeString(locale()) });
    } catch (err) {
      console.warn("dashboard: fetch failed", err);
      showStale(false);
    } finally {
      clearTimeout(timer);
    }
  }

  async function loop() {
    await once();
    setTimeout(loop, POLL_MS);
  }

  loop();
  // Times and numbers are formatted for the language: draw again after a switch.
  onLangChange(() => {
    if (state.last) draw(state.last);
  });
  return state;
}

// ------------------------------------------------------------------ the site tree

function levelName(level) {
  const key = "dashboard.levels_" + level;
  const text = t(key);
  return text === key ? level : text;
}

function drawTotals(data) {
  const list = document.getElementById("dash-totals");
  const items = [];
  for (const [level, figures] of Object.entries(data.totals)) {
    const args = { online: figures.online, total: figures.total, level: levelName(level) };
    const item = tel("li", "dashboard.total_line", args, {
      cls: "dash-total",
      attrs: { "data-level": level, "data-online": figures.online, "data-total": figures.total },
    });
    items.push(item);
  }
  const people = data.participants;
  items.push(
    tel("li", "dashboard.people_line", { count: people.connected }, {
      cls: "dash-total dash-people",
      attrs: { "data-count": people.connected },
    }),
  );
  if (people.no_site) {
    const args = { count: people.no_site };
    items.push(tel("li", "dashboard.no_site_line", args, { cls: "dash-total muted" }));
  }
  list.replaceChildren(...items);
}

/** The tree's shape: when it is unchanged the rows are updated in place (open folds stay). */
function shapeOf(sites) {
  return sites.map((s) => [s.code, s.parent, s.level, s.name].join("\u0001")).join("\u0002");
}

function siteRow(site) {
  const row = el("span", { cls: "dash-site" });
  row.append(
    el("span", { cls: "dash-site-name", text: site.name }),
    el("code", { cls: "site-code", text: site.code }),
    el("span", { cls: "dash-badge" }),
    el("span", { cls: "dash-node-badge" }),
    el("span", { cls: "dash-connected" }),
    el("span", { cls: "dash-reconnecting" }),
    el("span", { cls: "dash-site-rooms" }),
    el("span", { cls: "dash-group muted" }),
  );
  return row;
}

function buildTree(sites, container) {
  const children = new Map();
  const known = new Set(sites.map((s) => s.code));
  const roots = [];
  for (const site of sites) {
    if (site.parent && known.has(site.parent)) {
      if (!children.has(site.parent)) children.set(site.parent, []);
      children.get(site.parent).push(site);
    } else {
      roots.push(site);
    }
  }
  const rows = new Map();
  const seen = new Set();

  function list(items) {
    const ul = el("ul", { cls: "dash-list" });
    for (const site of items) {
      if (seen.has(site.code)) continue; // a cycle in bad data
      seen.add(site.code);
      const attrs = { "data-site": site.code, "data-level": site.level };
      const li = el("li", { cls: "dash-item", attrs });
      const kids = children.get(site.code) || [];
      const row = siteRow(site);
      if (kids.length) {
        const details = el("details", { cls: "dash-fold" });
        details.open = OPEN_LEVELS.has(site.level);
        const summary = el("summary");
        summary.append(row);
        details.append(summary, list(kids));
        li.append(details);
        li.dataset.leaf = "false";
      } else {
        li.append(row);
        li.dataset.leaf = "true";
      }
      rows.set(site.code, { li, row, kids: kids.map((k) => k.code) });
      ul.append(li);
    }
    return ul;
  }

  container.replaceChildren(list(roots));
  return rows;
}

function updateRow(entry, site, roomTitles, below) {
  const { li, row } = entry;
  li.dataset.online = site.online ? "true" : "false";
  li.dataset.node = site.node || "none";
  const badge = row.querySelector(".dash-badge");
  badge.dataset.state = site.online ? "online" : "offline";
  setText(badge, site.online ? "dashboard.online" : "dashboard.offline");

  const nodeBadge = row.querySelector(".dash-node-badge");
  nodeBadge.hidden = !site.node;
  if (site.node) {
    nodeBadge.dataset.state = site.node;
    setText(nodeBadge, site.node === "online" ? "dashboard.node_online" : "dashboard.node_offline");
  }

  const connected = row.querySelector(".dash-connected");
  connected.dataset.count = String(site.connected);
  setText(connected, "dashboard.connected_count", { count: site.connected });
  // A fold's own "0 người" next to the sum below it only confuses.
  connected.hidden = Boolean(below) && site.connected === 0;
  const reconnecting = row.querySelector(".dash-reconnecting");
  reconnecting.hidden = !site.reconnecting;
  if (site.reconnecting) {
    setText(reconnecting, "dashboard.reconnecting_count", { count: site.reconnecting });
  }

  const rooms = row.querySelector(".dash-site-rooms");
  rooms.replaceChildren(
    ...site.rooms.map((slug) =>
      el("a", {
        cls: "dash-room-tag",
        text: roomTitles.get(slug) || slug,
        attrs: { href: roomHref(slug) },
      }),
    ),
  );

  const group = row.querySelector(".dash-group");
  group.hidden = !below;
  if (below) {
    setText(group, "dashboard.group_summary", {
      online: below.online,
      total: below.total,
      level: below.level,
      count: site.connected_below,
    });
  }
}

function drawTree(data, view) {
  const container = document.getElementById("dash-tree");
  document.getElementById("dash-no-sites").hidden = data.sites.length > 0;
  const shape = shapeOf(data.sites);
  if (shape !== view.shape) {
    view.rows = buildTree(data.sites, container);
    view.shape = shape;
  }
  const bySite = new Map(data.sites.map((s) => [s.code, s]));
  const roomTitles = new Map(data.rooms.map((r) => [r.slug, r.title]));
  // Online/total of the communes below a fold (of every site below when it holds none):
  // "12/15 xã" reads better than a count mixing districts and communes.
  const memo = new Map();
  function below(code) {
    if (memo.has(code)) return memo.get(code);
    const sum = { online: 0, total: 0, communes: 0, communesOnline: 0 };
    memo.set(code, sum); // a cycle in bad data ends here
    for (const kid of view.rows.get(code)?.kids || []) {
      const site = bySite.get(kid);
      const online = site && site.online ? 1 : 0;
      const deeper = below(kid);
      sum.total += 1 + deeper.total;
      sum.online += online + deeper.online;
      const commune = site && site.level === "commune" ? 1 : 0;
      sum.communes += commune + deeper.communes;
      sum.communesOnline += (commune && online) + deeper.communesOnline;
    }
    return sum;
  }
  for (const site of data.sites) {
    const entry = view.rows.get(site.code);
    if (!entry) continue;
    let group = null;
    if (entry.kids.length) {
      const sum = below(site.code);
      group = sum.communes
        ? { online: sum.communesOnline, total: sum.communes, level: levelName("commune") }
        : { online: sum.online, total: sum.total, level: t("dashboard.levels_all") };
    }
    updateRow(entry, site, roomTitles, group);
  }
}

function drawRooms(data) {
  const list = document.getElementById("dash-rooms");
  document.getElementById("dash-no-rooms").hidden = data.rooms.length > 0;
  list.replaceChildren(
    ...data.rooms.map((room) => {
      const item = el("li", { cls: "rooms-item", attrs: { "data-room": room.slug } });
      const href = roomHref(room.slug);
      const link = el("a", { cls: "rooms-title", text: room.title, attrs: { href } });
      const meta = el("span", { cls: "rooms-meta" });
      const summary = { count: room.participants, sites: room.sites.length };
      meta.append(
        tel("span", "dashboard.room_summary", summary, {
          cls: "dash-room-count",
          attrs: { "data-count": room.participants },
        }),
      );
      if (room.reconnecting) {
        meta.append(tel("span", "dashboard.reconnecting_count", { count: room.reconnecting }));
      }
      if (room.lobby) meta.append(tel("span", "dashboard.room_lobby", { count: room.lobby }));
      meta.append(el("code", { text: room.slug }));
      item.append(link, meta);
      return item;
    }),
  );
}

function drawRecorders(data) {
  // null: the nodes record their meetings themselves, no workers to show.
  const section = document.getElementById("dash-recorders");
  const recorders = data.recorders;
  section.hidden = !recorders;
  if (!recorders) return;
  const summary = document.getElementById("dash-recorders-summary");
  const list = document.getElementById("dash-recorders-list");
  if (recorders.unknown) {
    setText(summary, "dashboard.recorders_unknown");
  } else if (!recorders.workers.length) {
    setText(summary, "dashboard.recorders_none", { pending: recorders.pending });
  } else {
    setText(summary, "dashboard.recorders_count", {
      count: recorders.workers.length,
      pending: recorders.pending,
    });
  }
  summary.dataset.count = String(recorders.workers.length);
  list.replaceChildren(
    ...recorders.workers.map((worker) => {
      const item = el("li", { attrs: { "data-recorder": worker.name } });
      item.append(el("strong", { text: worker.name }), " ");
      const state = worker.recordings.length
        ? tel("span", "dashboard.recorder_busy", {
            ids: worker.recordings.join(", "),
            count: worker.recordings.length,
            capacity: worker.capacity ?? "?",
          })
        : tel("span", "dashboard.recorder_idle", { capacity: worker.capacity ?? "?" });
      item.append(state);
      return item;
    }),
  );
}

function drawNodes(data) {
  const body = document.querySelector("#dash-nodes tbody");
  if (!data.nodes.length) {
    const cell = tel("td", "dashboard.no_nodes", undefined, {
      cls: "muted",
      attrs: { colspan: "7" },
    });
    const row = el("tr");
    row.append(cell);
    body.replaceChildren(row);
    return;
  }
  const now = data.now || Date.now() / 1000;
  body.replaceChildren(
    ...data.nodes.map((node) => {
      const alive = node.alive ? "true" : "false";
      const row = el("tr", { attrs: { "data-node": node.id, "data-alive": alive } });
      const name = el("td");
      name.append(el("a", { text: node.id, attrs: { href: node.url, rel: "noopener" } }));
      const state = el("td");
      const key = node.alive ? "dashboard.node_online" : "dashboard.node_offline";
      const badge = tel("span", key, undefined, {
        cls: "dash-node-badge",
        attrs: { "data-state": node.alive ? "online" : "offline" },
      });
      state.append(badge);
      const seen = el("td", { attrs: { title: clock(node.seen_at) } });
      setText(seen, "dashboard.seen_ago", { seconds: Math.max(0, Math.round(now - node.seen_at)) });
      const capacity = node.capacity
        ? `${node.participants}/${node.capacity}`
        : String(node.participants);
      row.append(
        name,
        el("td", { text: node.site || "—" }),
        state,
        el("td", { text: capacity }),
        el("td", { text: node.streams }),
        el("td", { text: `${Number(node.cpu).toFixed(0)} %` }),
        seen,
      );
      return row;
    }),
  );
}

function startTree() {
  const filter = document.getElementById("dash-filter");
  const tree = document.getElementById("dash-tree");
  filter.addEventListener("change", () => {
    tree.dataset.filter = filter.value;
  });
  const view = { shape: null, rows: new Map() };
  poll(root.dataset.url, (data) => {
    drawTotals(data);
    drawTree(data, view);
    drawRooms(data);
    drawNodes(data);
    drawRecorders(data);
  });
}

// ------------------------------------------------------------------ one room

const STATES = ["connected", "reconnecting", "lobby", "left", "not_joined"];

function drawRoom(data) {
  const invited = data.sites.filter((s) => s.invited);
  const counts = document.getElementById("dash-counts");
  const items = [
    tel("li", "dashboard.room_total", { online: data.counts.connected, total: invited.length }, {
      cls: "dash-total",
      attrs: { "data-online": data.counts.connected, "data-total": invited.length },
    }),
  ];
  for (const state of STATES) {
    if (!data.counts[state]) continue;
    items.push(
      tel("li", "dashboard.state_count", {
        state: t("dashboard.state_" + state),
        count: data.counts[state],
      }, {
        cls: "dash-total",
        attrs: { "data-state": state, "data-count": data.counts[state] },
      }),
    );
  }
  counts.replaceChildren(...items);

  document.getElementById("dash-room-title").textContent = data.room.title;
  document.getElementById("dash-no-sites").hidden = invited.length > 0;
  const body = document.querySelector("#dash-room-sites tbody");
  body.replaceChildren(
    ...data.sites.map((site) => {
      const row = el("tr", { attrs: { "data-site": site.code, "data-state": site.state } });
      const name = el("td");
      const code = el("code", { cls: "site-code", text: site.code });
      name.append(el("span", { text: site.name }), " ", code);
      if (!site.invited) {
        name.append(" ", tel("span", "dashboard.not_invited", undefined, { cls: "muted" }));
      }
      const state = el("td");
      state.append(
        tel("span", "dashboard.state_" + site.state, undefined, {
          cls: "dash-state",
          attrs: { "data-state": site.state },
        }),
      );
      const count = el("td", { cls: "dash-connected", text: site.connected });
      row.append(name, state, count, el("td", { text: site.names.join(", ") }));
      return row;
    }),
  );
  const noSite = document.getElementById("dash-no-site-people");
  noSite.hidden = !data.no_site.length;
  if (data.no_site.length) {
    setText(noSite, "dashboard.no_site_people", { names: data.no_site.join(", ") });
  }
}

function startRoom() {
  poll(root.dataset.url, drawRoom);
}

if (root) {
  if (root.dataset.view === "room") startRoom();
  else startTree();
}
