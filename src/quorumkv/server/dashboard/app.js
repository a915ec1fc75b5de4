// quorumkv dashboard: polls this node's JSON API and draws what it answers.
//
// Everything that came from the cluster (names, keys, values, messages) reaches the page
// through textContent or setAttribute, never as markup: keys and values are user data.
// The node serving the page may lose its leader, its majority or its process; every
// panel keeps the last state it saw, says how old it is, and recovers on the next answer.
"use strict";

(() => {
  const STATUS_POLL_MS = 1000;
  const EVENTS_POLL_MS = 1000;
  const STATS_POLL_MS = 2000;
  // Longer than the node's own 2 s bound on asking the leader for its view, so a node
  // whose leader just died still answers before the page calls it unreachable.
  const FETCH_TIMEOUT_MS = 4500;
  const MAX_EVENTS = 300;
  const EVENTS_PAGE = 200;
  // Lag is drawn on a log scale: 1 entry behind is visible, 10,000 fills the bar.
  const LAG_FULL = 10000;
  const LAG_WARN = 100;
  const LAG_BAD = 1000;
  const VALUE_SHOW_BYTES = 64 * 1024;
  const DOWN = new Set(["failed", "inactive"]);

  const $ = (id) => document.getElementById(id);

  function el(tag, opts, ...children) {
    const node = document.createElement(tag);
    const o = opts || {};
    if (o.cls) node.className = o.cls;
    if (o.text !== undefined && o.text !== null) node.textContent = String(o.text);
    if (o.attrs) {
      for (const [k, v] of Object.entries(o.attrs)) {
        if (v !== undefined && v !== null) node.setAttribute(k, String(v));
      }
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, parent) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.append(node);
    return node;
  }

  // ---------------------------------------------------------------- formatting

  const intFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  function fmtInt(n) {
    return n === null || n === undefined || Number.isNaN(n) ? "—" : intFmt.format(n);
  }
  function fmtRate(v) {
    if (v === null || v === undefined) return "—";
    if (v === 0) return "0";
    if (v < 10) return v.toFixed(1);
    return intFmt.format(v);
  }
  function fmtMs(v) {
    if (v === null || v === undefined) return "—";
    if (v < 1) return v.toFixed(2) + " ms";
    if (v < 10) return v.toFixed(1) + " ms";
    return intFmt.format(v) + " ms";
  }
  // Tick labels: as few digits as the step needs (the unit is in the panel's title).
  function fmtAxis(v) {
    if (v === 0) return "0";
    if (v >= 1000) return intFmt.format(v);
    return String(Number(v.toPrecision(3)));
  }
  function fmtSeconds(s) {
    if (s === null || s === undefined) return "—";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return (s / 3600).toFixed(1) + " h";
  }
  function fmtAgo(ms) {
    const s = Math.max(0, ms / 1000);
    if (s < 1.5) return "just now";
    if (s < 90) return Math.round(s) + " s ago";
    return Math.round(s / 60) + " min ago";
  }
  // Events carry Unix seconds; a key's timestamp is the leader's clock in nanoseconds
  // (beyond 2^53, so it may be kept as a string of digits). The magnitude tells.
  function toDate(t) {
    let ms;
    if (typeof t === "string" && /^[0-9]+$/.test(t)) {
      ms = Number(BigInt(t) / 1000000n);
    } else if (typeof t === "number" && Number.isFinite(t) && t > 0) {
      ms = t >= 1e17 ? t / 1e6 : t >= 1e14 ? t / 1e3 : t >= 1e11 ? t : t * 1000;
    } else {
      return null;
    }
    return new Date(ms);
  }
  function fmtClock(t) {
    const d = toDate(t);
    if (!d) return "—";
    return d.toLocaleTimeString("en-GB", { hour12: false });
  }
  // An id as the node wrote it: a string of digits (64-bit ids do not fit a JS number).
  function idText(v) {
    if (typeof v === "string") return v;
    if (typeof v === "number" && Number.isSafeInteger(v)) return String(v);
    return null;
  }
  function plural(n, one, many) {
    return `${fmtInt(n)} ${n === 1 ? one : many}`;
  }
  function nameList(names) {
    if (names.length <= 1) return names.join("");
    return names.slice(0, -1).join(", ") + " and " + names[names.length - 1];
  }
  const byName = (a, b) => String(a.name).localeCompare(String(b.name), "en", { numeric: true });

  // ---------------------------------------------------------------- bytes

  // Keys and values travel base64-encoded, so any byte string survives; here they are
  // shown as text when they are printable UTF-8, and escaped or dumped as hex otherwise.
  const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
  const CONTROL = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F]/;
  const textEncoder = new TextEncoder();

  function fromBase64(s) {
    if (typeof s !== "string") return new Uint8Array(0);
    let bin;
    try {
      bin = atob(s);
    } catch {
      return textEncoder.encode(s);
    }
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function toBase64(bytes) {
    let bin = "";
    for (const b of bytes) bin += String.fromCharCode(b);
    return btoa(bin);
  }
  function asText(bytes) {
    try {
      const t = strictUtf8.decode(bytes);
      return CONTROL.test(t) ? null : t;
    } catch {
      return null;
    }
  }
  const hex2 = (b) => b.toString(16).padStart(2, "0");
  function escaped(bytes) {
    let out = "";
    for (const b of bytes) {
      if (b === 0x5c) out += "\\\\";
      else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
      else out += "\\x" + hex2(b);
    }
    return out;
  }
  function hexDump(bytes, limit) {
    const n = Math.min(bytes.length, limit);
    const lines = [];
    for (let off = 0; off < n; off += 16) {
      const row = bytes.subarray(off, Math.min(off + 16, n));
      const hex = Array.from(row, hex2).join(" ").padEnd(47, " ");
      const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
      lines.push(off.toString(16).padStart(8, "0") + "  " + hex + "  |" + ascii + "|");
    }
    return lines.join("\n");
  }
  // One line of a key or value for a table cell: text, or escaped bytes marked as binary.
  function shortForm(bytes, max) {
    const text = asText(bytes);
    if (text !== null) {
      const flat = text.replace(/\s+/g, " ");
      return { text: flat.length > max ? flat.slice(0, max) + "…" : flat, binary: false };
    }
    const esc = escaped(bytes.subarray(0, max));
    return { text: esc + (bytes.length > max ? "…" : ""), binary: true };
  }
  function fmtBytes(n) {
    if (n < 1024) return plural(n, "byte", "bytes");
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1024 / 1024).toFixed(1) + " MiB";
  }

  // ---------------------------------------------------------------- fetching

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }
  class NetworkError extends Error {}

  // Ids (member, cluster, lease) arrive as strings of digits and are shown as they are.
  // Other integers beyond 2^53 (a key's timestamp in nanoseconds) would be rounded as JS
  // numbers, so they are kept as their exact digits where the browser gives the source text.
  function keepBigInts(_key, value, context) {
    if (typeof value === "number" && Number.isInteger(value) && !Number.isSafeInteger(value)
        && context && typeof context.source === "string" && /^-?[0-9]+$/.test(context.source)) {
      return context.source;
    }
    return value;
  }

  // ---------------------------------------------------------------- signing in
  //
  // With auth enabled the API answers 401 to a request without a user: the page then shows
  // a sign-in form in place of its content. The token lives in sessionStorage (this tab
  // only, gone when it closes) and goes in an Authorization header on every request,
  // never in a URL. A 403 is a panel's business: it says "not permitted" and the rest
  // of the page carries on.
  const TOKEN_KEY = "quorumkv.token";
  const USER_KEY = "quorumkv.user";

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch {
      return null;  // storage disabled: the page then works only without auth
    }
  }

  function storeToken(token, user) {
    try {
      if (token) {
        sessionStorage.setItem(TOKEN_KEY, token);
        sessionStorage.setItem(USER_KEY, user);
      } else {
        sessionStorage.removeItem(TOKEN_KEY);
        sessionStorage.removeItem(USER_KEY);
      }
    } catch {
      // Nothing to keep it in: the user signs in again after a reload.
    }
  }

  function apiHeaders(extra) {
    const headers = { Accept: "application/json", ...(extra || {}) };
    const token = storedToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  function renderSignedIn() {
    let user = null;
    try {
      user = storedToken() ? sessionStorage.getItem(USER_KEY) : null;
    } catch {
      user = null;
    }
    $("signed-in").hidden = !user;
    $("signed-in-user").textContent = user ? `signed in as ${user}` : "";
  }

  function showSignIn(message) {
    const form = $("signin");
    const wasHidden = form.hidden;
    form.hidden = false;
    $("content").hidden = true;
    const err = $("signin-error");
    err.hidden = !message;
    err.textContent = message || "";
    if (wasHidden) $("signin-user").focus();
  }

  function hideSignIn() {
    $("signin").hidden = true;
    $("content").hidden = false;
    $("signin-error").hidden = true;
  }

  // The node said nobody (or an expired or revoked token) is asking.
  function needSignIn(e) {
    const had = storedToken();
    if (had) storeToken(null);
    renderSignedIn();
    // Every poller meets the 401: the first one shows the form, the others leave it (and
    // any message on it, such as a failed sign-in's) alone.
    if (!had && !$("signin").hidden) return;
    showSignIn(had && e.code === "invalid_token" ? "Your session ended: sign in again." : "");
  }

  async function signIn(ev) {
    ev.preventDefault();
    const name = $("signin-user").value;
    const password = $("signin-password").value;
    const button = $("signin-submit");
    button.disabled = true;
    try {
      let resp;
      let body = null;
      try {
        resp = await fetch("/v1/auth/authenticate", {
          method: "POST", cache: "no-store",
          headers: { Accept: "application/json", "Content-Type": "application/json" },
          body: JSON.stringify({ name, password }),
        });
        body = await resp.json();
      } catch {
        showSignIn("The node did not answer: try again.");
        return;
      }
      if (!resp.ok || !body || typeof body.token !== "string") {
        const e = body && body.error ? body.error : {};
        const wait = resp.headers.get("Retry-After");
        showSignIn(resp.status === 429 && wait
          ? `Too many failed sign-ins: try again in ${wait} s.`
          : resp.status === 401 ? "Wrong user name or password." : (e.message || "Sign-in failed."));
        return;
      }
      storeToken(body.token, String(body.user));
      $("signin-password").value = "";
      renderSignedIn();
      hideSignIn();
      pollStatus();
      pollEvents();
      pollStats();
    } finally {
      button.disabled = false;
    }
  }

  function signOut(ev) {
    ev.preventDefault();
    storeToken(null);
    renderSignedIn();
    showSignIn("");
  }

  async function getJSON(path) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    try {
      let resp;
      try {
        resp = await fetch(path, { signal: ctrl.signal, cache: "no-store",
                                   headers: apiHeaders() });
      } catch {
        throw new NetworkError(ctrl.signal.aborted
          ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s`
          : "the connection was refused or broken");
      }
      let body = null;
      let text = "";
      try {
        text = await resp.text();
        body = JSON.parse(text, keepBigInts);
      } catch {
        if (ctrl.signal.aborted) throw new NetworkError("the answer stopped arriving");
      }
      if (!resp.ok) {
        const e = body && typeof body.error === "object" && body.error ? body.error : {};
        const err = new ApiError(resp.status, e.code || `http_${resp.status}`,
                                 e.message || resp.statusText || "request failed");
        if (resp.status === 401) needSignIn(err);
        throw err;
      }
      if (body === null || typeof body !== "object") {
        throw new ApiError(resp.status, "bad_answer", "the answer was not a JSON object");
      }
      return body;
    } finally {
      clearTimeout(timer);
    }
  }
  const isFetchError = (e) => e instanceof ApiError || e instanceof NetworkError;
  function describe(e) {
    if (e instanceof ApiError && e.status === 403) return "not permitted";
    if (e instanceof ApiError && e.status === 401) return "sign in to see this";
    if (e instanceof ApiError) return `${e.status} ${e.code}: ${e.message}`;
    return e.message;
  }

  // Each poller waits for its previous round before scheduling the next, so a slow node
  // is never sent a pile of overlapping requests.
  function every(ms, fn) {
    const run = async () => {
      try {
        await fn();
      } finally {
        setTimeout(run, ms);
      }
    };
    run();
  }

  // ---------------------------------------------------------------- state

  const state = {
    status: null,
    statusAt: 0,
    statusError: null,
    events: [],
    lastSeq: null,
    eventsError: null,
    eventFilter: "all",
    stats: null,
    statsError: null,
    window: 300,
  };

  // ---------------------------------------------------------------- status

  async function pollStatus() {
    try {
      state.status = await getJSON("/v1/cluster/status");
      state.statusAt = Date.now();
      state.statusError = null;
    } catch (e) {
      if (!isFetchError(e)) throw e;
      state.statusError = e;
    }
    renderStatus();
  }

  function servedName() {
    const st = state.status;
    return st && st.node && st.node.name ? String(st.node.name) : "this node";
  }

  // The members as the serving node sees them, with what only the leader knows (lag,
  // match) taken from the leader's view when this node is not the leader.
  function members() {
    const st = state.status;
    if (!st || !Array.isArray(st.members)) return [];
    const lv = new Map();
    if (st.leader_view && Array.isArray(st.leader_view.members)) {
      for (const m of st.leader_view.members) lv.set(String(m.name), m);
    }
    const selfName = servedName();
    // The leader's own indexes come with its view; for any other member only what the
    // leader knows (match, lag) is available here.
    const leaderNode = st.leader_view && st.leader_view.node ? st.leader_view.node : null;
    const leaderName = st.leader_view ? String(st.leader_view.name) : null;
    return st.members.map((m) => {
      const l = lv.get(String(m.name)) || {};
      const self = String(m.name) === selfName;
      const own = self ? st.node : (leaderNode && String(m.name) === leaderName ? leaderNode : null);
      const pick = (k) => (m[k] !== undefined && m[k] !== null ? m[k] : (l[k] ?? null));
      const fact = (k) => (own && own[k] !== undefined ? own[k] : (m[k] ?? null));
      return {
        ...m,
        name: String(m.name),
        self,
        lag: pick("lag"),
        match: pick("match"),
        promotion: pick("promotion"),
        leaderStatus: st.leader_view && l.status ? l.status : null,
        term: fact("term"),
        commit: fact("commit"),
        applied: fact("applied"),
        known: own !== null || m.commit !== undefined,
      };
    }).sort(byName);
  }

  function voterCounts(list) {
    const voters = list.filter((m) => m.voter);
    const down = voters.filter((m) => DOWN.has(m.status));
    const majority = Math.floor(voters.length / 2) + 1;
    return { total: voters.length, up: voters.length - down.length, down, majority };
  }

  function renderStatus() {
    renderConn();
    renderBanner();
    renderSummary();
    renderMembers();
  }

  function renderConn() {
    const conn = $("conn");
    const text = $("conn-text");
    const st = state.status;
    if (state.statusError) {
      conn.dataset.state = "unreachable";
      text.textContent = state.statusAt
        ? `unreachable · last answer ${fmtAgo(Date.now() - state.statusAt)}`
        : "unreachable";
    } else if (!st) {
      conn.dataset.state = "connecting";
      text.textContent = "connecting…";
    } else {
      conn.dataset.state = st.leader ? "live" : "degraded";
      text.textContent = `live · ${servedName()} · updated ${fmtAgo(Date.now() - state.statusAt)}`;
    }
  }

  function bannerMessages() {
    const out = [];
    const name = servedName();
    const err = state.statusError;
    if (err) {
      const since = state.statusAt
        ? `The panels show what it last reported, ${fmtAgo(Date.now() - state.statusAt)}.`
        : "Nothing has been heard from it yet.";
      if (err instanceof NetworkError) {
        out.push({ level: "error", key: "unreachable",
                   title: `This node (${name}) is unreachable: ${err.message}.`,
                   detail: `${since} Retrying every second; the page recovers by itself.` });
      } else {
        out.push({ level: "error", key: "status-error",
                   title: `${name} could not report its status (${describe(err)}).`,
                   detail: `${since} Retrying every second.` });
      }
      return out;  // what follows would be read from stale data
    }
    const st = state.status;
    if (!st || !st.node) return out;
    const list = members();
    const v = voterCounts(list);
    if (!st.leader) {
      const downNames = v.down.map((m) => `${m.name} (${m.status})`);
      out.push({ level: "error", key: "no-leader",
                 title: `${name} has no leader: the cluster cannot accept writes (majority lost?)`,
                 detail: (downNames.length
                   ? `${name} sees ${nameList(downNames)}; ${v.up} of ${v.total} voters are up and a majority needs ${v.majority}. `
                   : "An election may be under way. ")
                   + "Reads from this node may be stale until a leader is elected." });
    } else if (v.down.length) {
      const spare = v.up - v.majority;
      const who = nameList(v.down.map((m) => m.name));
      const verb = v.down.length === 1 ? "is" : "are";
      const statuses = Array.from(new Set(v.down.map((m) => m.status))).join(" or ");
      // Amber, not red: the cluster still accepts writes; red is kept for when it cannot.
      out.push({ level: "warn", key: "voters-down",
                 title: `${who} ${verb} down (${statuses}): ${v.up} of ${v.total} voters are up (a majority is ${v.majority}).`,
                 detail: spare <= 0
                   ? "One more failure and the cluster stops accepting writes."
                   : `The cluster can lose ${plural(spare, "more voter", "more voters")} and keep accepting writes.` });
    }
    if (st.leader && st.leader_view_error) {
      out.push({ level: "info", key: "leader-view",
                 title: `Could not ask the leader for its view: ${st.leader_view_error}.`,
                 detail: "Replication lag is known only on the leader; it is shown as unknown." });
    }
    if (st.node.leaving) {
      out.push({ level: "warn", key: "leaving", title: `${name} is leaving the cluster.`,
                 detail: "It stops serving once its removal is committed." });
    }
    return out;
  }

  let lastBanner = "";
  function renderBanner() {
    const banner = $("banner");
    const msgs = bannerMessages();
    const signature = JSON.stringify(msgs);
    if (signature === lastBanner) return;
    lastBanner = signature;
    banner.replaceChildren();
    banner.hidden = msgs.length === 0;
    banner.dataset.level = msgs.length ? msgs[0].level : "none";
    for (const m of msgs) {
      const icon = el("span", { cls: "banner-icon", text: m.level === "info" ? "i" : "!",
                                attrs: { "aria-hidden": "true" } });
      const body = el("div", {},
        el("div", { cls: "banner-title", text: m.title }),
        m.detail ? el("div", { cls: "banner-detail", text: m.detail }) : null);
      banner.append(el("div", { cls: "banner-item",
                                attrs: { "data-level": m.level, "data-key": m.key,
                                         "data-testid": "banner-message" } }, icon, body));
    }
  }

  function setTile(id, value, sub, tone) {
    const v = $(id);
    v.textContent = value;
    v.classList.toggle("bad", tone === "bad");
    v.classList.toggle("warn", tone === "warn");
    $(id + "-sub").textContent = sub;
  }

  function renderSummary() {
    const st = state.status;
    if (!st || !st.node) return;
    const n = st.node;
    const role = String(n.role || "").replace("_", "-");
    setTile("sum-served", servedName(), `${role} · term ${fmtInt(n.term)}`);
    if (st.leader) {
      setTile("sum-leader", String(st.leader), `term ${fmtInt(n.term)}`);
    } else {
      setTile("sum-leader", "none", "election under way, or majority lost", "bad");
    }
    const v = voterCounts(members());
    const learners = Array.isArray(n.learners) ? n.learners.length : 0;
    setTile("sum-voters", `${v.up} / ${v.total}`,
            `majority ${v.majority}` + (learners ? ` · ${plural(learners, "learner", "learners")}` : ""),
            v.up < v.majority ? "bad" : (v.up < v.total ? "warn" : undefined));
    const behind = (n.commit ?? 0) - (n.applied ?? 0);
    setTile("sum-index", `${fmtInt(n.commit)} / ${fmtInt(n.applied)}`,
            `revision ${fmtInt(st.header ? st.header.revision : null)} · snapshot ${fmtInt(n.snapshot_index)}`,
            behind > LAG_BAD ? "warn" : undefined);
    $("cluster-id").textContent = idText(n.cluster_id) || "…";
    document.title = `${servedName()} · quorumkv` + (st.leader ? "" : " · no leader");
  }

  // -------------------------------------------------------------- member cards

  const cards = new Map();
  const CROWN = "M2 6l4.2 3.2L10 3l3.8 6.2L18 6l-1.8 9H3.8z";

  function makeCard(name) {
    const c = {};
    c.root = el("article", { cls: "member",
                             attrs: { "data-testid": "member-card", "data-member": name } });
    c.name = el("span", { cls: "member-name", text: name });
    c.self = el("span", { cls: "member-self", text: "this node",
                          attrs: { "data-testid": "self-marker" } });
    c.roleSlot = el("span", { cls: "role-slot" });
    c.root.append(el("div", { cls: "member-head" }, c.name, c.self,
                     el("span", { cls: "spacer" }), c.roleSlot));
    c.status = el("span", { cls: "status-pill", attrs: { "data-testid": "member-status" } });
    c.statusNote = el("span", { cls: "muted" });
    c.root.append(el("div", { cls: "member-status-line" }, c.status, c.statusNote));
    const facts = el("dl", { cls: "facts" });
    c.facts = {};
    for (const [key, label] of [["term", "Term"], ["commit", "Commit"], ["applied", "Applied"],
                                ["match", "Match"], ["phi", "Phi"], ["seen", "Silent for"]]) {
      const dd = el("dd", { attrs: { "data-fact": key } });
      c.facts[key] = dd;
      facts.append(el("div", {}, el("dt", { text: label }), dd));
    }
    c.root.append(facts);
    c.lagText = el("span", { cls: "lag-text" });
    c.lagFill = el("div", { cls: "lag-fill" });
    c.lag = el("div", { cls: "lag", attrs: { "data-testid": "lag" } },
               el("div", { cls: "lag-head" }, el("span", { text: "Replication lag" }), c.lagText),
               el("div", { cls: "lag-track" }, c.lagFill));
    c.root.append(c.lag);
    c.note = el("div", { cls: "member-note" });
    c.root.append(c.note);
    c.addr = el("span");
    c.kind = el("span");
    c.root.append(el("div", { cls: "member-foot" }, c.addr, c.kind));
    c.role = null;
    return c;
  }

  function roleNode(role) {
    if (role === "leader") {
      const mark = el("span", { cls: "leader-marker",
                                attrs: { "data-testid": "leader-marker", title: "The leader" } });
      const icon = svg("svg", { viewBox: "0 0 20 18", "aria-hidden": "true" });
      svg("path", { d: CROWN }, icon);
      mark.append(icon, document.createTextNode("LEADER"));
      return mark;
    }
    return el("span", { cls: "role-tag", text: String(role || "unknown").replace("_", "-"),
                        attrs: { "data-role": role } });
  }

  function setFact(dd, value, title) {
    const known = value !== null && value !== undefined && value !== "";
    dd.textContent = known ? String(value) : "—";
    dd.classList.toggle("unknown", !known);
    if (title) dd.title = title;
    else dd.removeAttribute("title");
  }

  function lagInfo(m, st) {
    if (m.lag === null || m.lag === undefined) {
      const why = !st.leader ? "no leader" : "unknown";
      return { level: "unknown", text: why, frac: 0 };
    }
    const lag = Math.max(0, Number(m.lag));
    const frac = lag === 0 ? 0 : Math.max(0.03, Math.min(1, Math.log10(lag + 1) / Math.log10(LAG_FULL + 1)));
    const level = lag < LAG_WARN ? "ok" : (lag < LAG_BAD ? "warn" : "bad");
    const text = lag === 0
      ? (m.role === "leader" ? "leader's own log" : "in sync")
      : `${plural(lag, "entry", "entries")} behind`;
    return { level, text, frac };
  }

  function updateCard(c, m, st) {
    const status = DOWN.has(m.status) || ["active", "joining", "leaving"].includes(m.status)
      ? m.status : "unknown";
    c.root.dataset.role = m.role || "unknown";
    const id = idText(m.id);
    if (id) c.root.dataset.id = id;
    c.name.title = id ? `member id ${id}` : "";
    c.root.dataset.status = status;
    c.root.dataset.self = m.self ? "true" : "false";
    c.root.setAttribute("aria-label", `${m.name}: ${m.role}, ${status}`);
    c.self.hidden = !m.self;
    if (c.role !== m.role) {
      c.role = m.role;
      c.roleSlot.replaceChildren(roleNode(m.role));
    }
    c.status.textContent = status;
    let note = "";
    if (m.self) note = "as seen from itself";
    else if (m.last_seen !== null && m.last_seen !== undefined && DOWN.has(status)) {
      note = `silent for ${fmtSeconds(m.last_seen)}`;
    } else if (m.last_seen === null && !m.self) note = "never heard from";
    if (m.leaderStatus && m.leaderStatus !== m.status && !m.self) {
      note = (note ? note + " · " : "") + `the leader sees ${m.leaderStatus}`;
    }
    c.statusNote.textContent = note;

    const only = m.known ? null : "reported only by that member itself";
    setFact(c.facts.term, m.term === null ? null : fmtInt(m.term), only);
    setFact(c.facts.commit, m.commit === null ? null : fmtInt(m.commit), only);
    setFact(c.facts.applied, m.applied === null ? null : fmtInt(m.applied), only);
    setFact(c.facts.match, m.match === null ? null : fmtInt(m.match),
            "the highest log index the leader knows this member holds");
    setFact(c.facts.phi, m.self || m.phi === null || m.phi === undefined ? null : Number(m.phi).toFixed(2),
            "phi-accrual suspicion: above 8 inactive, above 16 failed");
    setFact(c.facts.seen, m.self || m.last_seen === null || m.last_seen === undefined ? null : fmtSeconds(m.last_seen),
            "time since the last frame from this member arrived");

    const lag = lagInfo(m, st);
    c.lag.dataset.level = lag.level;
    c.lagText.textContent = lag.text;
    c.lagFill.style.width = (lag.frac * 100).toFixed(1) + "%";

    c.note.textContent = m.promotion ? String(m.promotion) : "";
    c.addr.textContent = m.client_address || m.peer_address || "";
    c.addr.title = m.peer_address ? `peer ${m.peer_address}` : "";
    c.kind.textContent = m.voter ? "voter" : "learner";
  }

  function renderMembers() {
    const st = state.status;
    const box = $("members");
    box.classList.toggle("stale", !!state.statusError);
    if (!st) return;
    const list = members();
    $("members-empty").hidden = list.length > 0;
    const v = voterCounts(list);
    $("members-note").textContent = `${plural(list.length, "member", "members")} · ${plural(v.total, "voter", "voters")} as ${servedName()} sees them`;
    const seen = new Set();
    list.forEach((m, i) => {
      seen.add(m.name);
      let c = cards.get(m.name);
      if (!c) {
        c = makeCard(m.name);
        cards.set(m.name, c);
      }
      updateCard(c, m, st);
      if (box.children[i] !== c.root) box.insertBefore(c.root, box.children[i] || null);
    });
    for (const [name, c] of cards) {
      if (!seen.has(name)) {
        c.root.remove();
        cards.delete(name);
      }
    }
  }

  // ---------------------------------------------------------------- events

  // The node's event kinds (server/events.py), grouped for the filter and the colours.
  const KIND_CATEGORY = {
    term_changed: "election", pre_vote_started: "election", election_started: "election",
    became_leader: "election", became_follower: "election", leader_changed: "election",
    leader_lost: "election", leadership_transfer: "election",
    member_added: "membership", member_promoted: "membership", member_removed: "membership",
    snapshot_created: "snapshot", snapshot_sent: "snapshot", snapshot_send_failed: "snapshot",
    snapshot_installed: "snapshot",
    disk_failed: "failure",
  };

  function category(e) {
    const kind = String(e.kind || "");
    if (kind === "peer_health") {
      return e.fields && e.fields.state === "active" ? "recovery" : "failure";
    }
    if (KIND_CATEGORY[kind]) return KIND_CATEGORY[kind];
    // Kinds added after this page was written still land somewhere sensible.
    if (/snapshot/.test(kind)) return "snapshot";
    if (/fail|lost|error/.test(kind)) return "failure";
    if (/elect|leader|term|vote/.test(kind)) return "election";
    if (/member|join|leav|promot/.test(kind)) return "membership";
    return "other";
  }

  function kindLabel(e) {
    const kind = String(e.kind || "event");
    if (kind === "peer_health" && e.fields && typeof e.fields.state === "string") {
      return `peer ${e.fields.state}`;
    }
    return kind.replaceAll("_", " ");
  }

  async function pollEvents() {
    const since = state.lastSeq === null ? 0 : state.lastSeq;
    let body;
    try {
      body = await getJSON(`/v1/events?since=${since}&limit=${EVENTS_PAGE}`);
      state.eventsError = null;
    } catch (e) {
      if (!isFetchError(e)) throw e;
      state.eventsError = e;
      renderEventsError();
      return;
    }
    const fresh = Array.isArray(body.events) ? body.events : [];
    const last = typeof body.last_seq === "number" ? body.last_seq : null;
    // A restarted node numbers its events from the start again: begin the feed anew.
    if (last !== null && state.lastSeq !== null && last < state.lastSeq) {
      state.events = [];
      state.lastSeq = null;
      $("events").replaceChildren();
      return;
    }
    const known = state.events.length ? state.events[state.events.length - 1].seq : -Infinity;
    const added = fresh.filter((e) => typeof e.seq === "number" && e.seq > known)
                       .sort((a, b) => a.seq - b.seq);
    const first = state.lastSeq === null;
    state.events.push(...added);
    if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
    const maxSeen = added.length ? added[added.length - 1].seq : null;
    state.lastSeq = Math.max(state.lastSeq ?? 0, last ?? 0, maxSeen ?? 0);
    renderEventsError();
    renderNewEvents(added, !first);
  }

  function renderEventsError() {
    const p = $("events-error");
    p.hidden = !state.eventsError;
    p.textContent = state.eventsError ? `Events unavailable: ${describe(state.eventsError)}` : "";
  }

  function eventRow(e, fresh) {
    const cat = category(e);
    const level = String(e.level || "info").toLowerCase();
    const row = el("li", { cls: "event" + (fresh ? " fresh" : ""),
                           attrs: { "data-testid": "event-row", "data-kind": e.kind,
                                    "data-cat": cat, "data-level": level, "data-seq": e.seq } });
    const d = toDate(e.time);
    row.append(el("span", { cls: "event-time", text: fmtClock(e.time),
                            attrs: { title: d ? d.toISOString() : "" } }));
    row.append(el("span", { cls: "event-kind", text: kindLabel(e),
                            attrs: { "data-cat": cat, title: String(e.kind || "") } }));
    const msg = el("div", { cls: "event-msg" }, el("div", { text: e.message || "" }));
    if (e.fields && typeof e.fields === "object") {
      const parts = Object.entries(e.fields).map(([k, v]) =>
        `${k}=${typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)}`);
      if (parts.length) msg.append(el("div", { cls: "event-fields", text: parts.join("  ") }));
    }
    row.append(msg);
    row.hidden = !eventVisible(cat);
    return row;
  }

  function eventVisible(cat) {
    const f = state.eventFilter;
    return f === "all" || f === cat || (f === "failure" && cat === "recovery");
  }

  function renderNewEvents(added, animate) {
    const list = $("events");
    for (const e of added) list.prepend(eventRow(e, animate));
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    updateEventsEmpty();
  }

  function updateEventsEmpty() {
    const visible = Array.from($("events").children).some((r) => !r.hidden);
    const empty = $("events-empty");
    empty.hidden = visible;
    empty.textContent = state.events.length ? "No events of this kind." : "No events yet.";
  }

  function applyEventFilter(filter) {
    state.eventFilter = filter;
    for (const b of $("event-filter").querySelectorAll("button")) {
      b.classList.toggle("on", b.dataset.filter === filter);
    }
    for (const row of $("events").children) row.hidden = !eventVisible(row.dataset.cat);
    updateEventsEmpty();
  }

  // ---------------------------------------------------------------- charts

  function niceStep(range, count) {
    const raw = range / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    const step = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
    return step * mag;
  }

  const tooltip = () => $("tooltip");

  class LineChart {
    constructor(container, legend, series, format, axisFormat) {
      this.container = container;
      this.legendEl = legend;
      this.series = series;
      this.format = format;
      this.axisFormat = axisFormat;
      this.rows = [];
      this.t1 = 0;
      this.message = "waiting for statistics…";
      this.interval = 1;
      this.layout = null;
      new ResizeObserver(() => this.draw()).observe(container);
      container.addEventListener("mousemove", (ev) => this.hover(ev));
      container.addEventListener("mouseleave", () => this.unhover());
      this.buildLegend();
    }

    buildLegend() {
      this.legendVals = {};
      for (const s of this.series) {
        const val = el("span", { cls: "val", text: "—" });
        this.legendVals[s.key] = val;
        this.legendEl.append(el("li", {},
          el("span", { cls: `key ${s.cls}` + (s.dashed ? " dashed" : "") }),
          el("span", { text: s.label }), val));
      }
    }

    set(rows, interval, message) {
      this.rows = rows;
      this.interval = interval || 1;
      this.message = message;
      this.t1 = rows.length ? rows[rows.length - 1].t : 0;
      // Seconds with anything to draw: lets a test (or a curious operator) see the chart
      // has been fed, without reading pixels.
      this.container.dataset.busySeconds = String(rows.filter((r) => this.series.some(
        (s) => typeof r[s.key] === "number" && r[s.key] > 0)).length);
      const last = rows.length ? rows[rows.length - 1] : null;
      for (const s of this.series) {
        this.legendVals[s.key].textContent = last ? this.format(last[s.key]) : "—";
      }
      this.draw();
    }

    draw() {
      const w = this.container.clientWidth;
      const h = this.container.clientHeight;
      const root = svg("svg", { width: w, height: h, role: "img",
                                "aria-label": this.container.id.replace("chart-", "") + " chart" });
      this.container.replaceChildren(root);
      this.layout = null;
      if (w < 80 || h < 60) return;
      const m = { l: 52, r: 10, t: 10, b: 24 };
      const iw = w - m.l - m.r;
      const ih = h - m.t - m.b;
      const span = state.window;
      const t1 = this.t1;
      const t0 = t1 - span;
      const rows = this.rows.filter((r) => r.t >= t0 - this.interval);
      let ymax = 0;
      for (const r of rows) {
        for (const s of this.series) {
          const v = r[s.key];
          if (typeof v === "number" && v > ymax) ymax = v;
        }
      }
      const step = niceStep(ymax > 0 ? ymax : 1, 4);
      const top = Math.max(step, Math.ceil((ymax > 0 ? ymax : 1) / step) * step);
      const x = (t) => m.l + ((t - t0) / span) * iw;
      const y = (v) => m.t + ih - (v / top) * ih;

      const grid = svg("g", { class: "grid" }, root);
      const axis = svg("g", { class: "axis" }, root);
      for (let v = 0; v <= top + step / 2; v += step) {
        svg("line", { x1: m.l, x2: m.l + iw, y1: y(v), y2: y(v) }, grid);
        const label = svg("text", { x: m.l - 8, y: y(v) + 4, "text-anchor": "end" }, axis);
        label.textContent = this.axisFormat(v);
      }
      const xStep = span <= 60 ? 15 : span <= 300 ? 60 : 120;
      for (let ago = span; ago >= 0; ago -= xStep) {
        const tx = x(t1 - ago);
        svg("line", { x1: tx, x2: tx, y1: m.t, y2: m.t + ih }, grid);
        const label = svg("text", { x: tx, y: h - 6,
                                    "text-anchor": ago === span ? "start" : ago === 0 ? "end" : "middle" }, axis);
        label.textContent = ago === 0 ? "now" : ago < 60 ? `−${ago}s` : `−${ago / 60}m`;
      }
      if (!rows.length) {
        const t = svg("text", { x: m.l + iw / 2, y: m.t + ih / 2, "text-anchor": "middle", class: "nodata" }, root);
        t.textContent = this.message || "no data yet";
        return;
      }
      const gap = 3 * this.interval;
      for (const s of this.series) {
        const segments = [];
        let cur = [];
        let prevT = null;
        for (const r of rows) {
          const v = r[s.key];
          if (typeof v !== "number" || (prevT !== null && r.t - prevT > gap)) {
            if (cur.length) segments.push(cur);
            cur = [];
          }
          if (typeof v === "number") cur.push([x(Math.max(r.t, t0)), y(v)]);
          prevT = r.t;
        }
        if (cur.length) segments.push(cur);
        for (const seg of segments) {
          const line = seg.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
          if (s.area && seg.length > 1) {
            const base = y(0).toFixed(1);
            svg("path", { class: `area ${s.cls}`,
                          d: `${line}L${seg[seg.length - 1][0].toFixed(1)},${base}L${seg[0][0].toFixed(1)},${base}Z` }, root);
          }
          if (seg.length === 1) {
            svg("circle", { cx: seg[0][0], cy: seg[0][1], r: 1.8, class: s.cls }, root);
          } else {
            svg("path", { class: `series ${s.cls}` + (s.dashed ? " dashed" : ""), d: line }, root);
          }
        }
      }
      this.cursor = svg("line", { class: "cursor", x1: 0, x2: 0, y1: m.t, y2: m.t + ih, visibility: "hidden" }, root);
      this.layout = { m, iw, t0, span, x };
    }

    hover(ev) {
      if (!this.layout || !this.rows.length) return;
      const rect = this.container.getBoundingClientRect();
      const { m, iw, t0, span, x } = this.layout;
      const px = ev.clientX - rect.left;
      if (px < m.l || px > m.l + iw) {
        this.unhover();
        return;
      }
      const t = t0 + ((px - m.l) / iw) * span;
      let best = null;
      for (const r of this.rows) {
        if (r.t < t0) continue;
        if (!best || Math.abs(r.t - t) < Math.abs(best.t - t)) best = r;
      }
      if (!best) return;
      this.cursor.setAttribute("x1", x(best.t));
      this.cursor.setAttribute("x2", x(best.t));
      this.cursor.setAttribute("visibility", "visible");
      const lines = [fmtClock(best.t)];
      for (const s of this.series) lines.push(`${s.label.padEnd(12)} ${this.format(best[s.key])}`);
      const tip = tooltip();
      tip.textContent = lines.join("\n");
      tip.hidden = false;
      const left = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
      tip.style.left = `${left}px`;
      tip.style.top = `${ev.clientY + 14}px`;
    }

    unhover() {
      tooltip().hidden = true;
      if (this.cursor) this.cursor.setAttribute("visibility", "hidden");
    }
  }

  let throughput = null;
  let latency = null;

  async function pollStats() {
    try {
      state.stats = await getJSON("/v1/stats");
      state.statsError = null;
    } catch (e) {
      if (!isFetchError(e)) throw e;
      state.statsError = e;
    }
    renderStats();
  }

  function renderStats() {
    const body = state.stats;
    const interval = body && body.interval_s > 0 ? body.interval_s : 1;
    // Counts are per interval; the charts speak of requests per second.
    const perSecond = (v) => (typeof v === "number" ? v / interval : v);
    const rows = body && Array.isArray(body.series)
      ? body.series.filter((r) => typeof r.t === "number").sort((a, b) => a.t - b.t)
        .map((r) => ({ ...r, reads: perSecond(r.reads), writes: perSecond(r.writes),
                       errors: perSecond(r.errors) }))
      : [];
    const msg = state.statsError ? `statistics unavailable: ${describe(state.statsError)}` : "no requests yet";
    const rowsShown = state.statsError && !rows.length ? [] : rows;
    throughput.set(rowsShown, interval, msg);
    latency.set(rowsShown, interval, msg);
    const last = rowsShown.length ? rowsShown[rowsShown.length - 1] : null;
    if (last) {
      setTile("sum-traffic", `${fmtRate(last.reads)} r/s · ${fmtRate(last.writes)} w/s`,
              `p99 read ${fmtMs(last.read_p99_ms)} · write ${fmtMs(last.write_p99_ms)}`
              + (last.errors ? ` · ${fmtRate(last.errors)} errors/s` : ""),
              last.errors ? "warn" : undefined);
    } else {
      setTile("sum-traffic", "—", state.statsError ? "statistics unavailable" : "no requests yet");
    }
  }

  // ---------------------------------------------------------------- key browser

  const kv = { rows: [], selected: null, view: "text", scanSeq: 0, historySeq: 0,
               consistency: "one" };

  function showKvError(e) {
    const p = $("kv-error");
    p.hidden = !e;
    p.textContent = e ? (isFetchError(e) ? describe(e) : e.message) : "";
  }

  // Every item names the encoding of its key and value; base64 is asked for, so any
  // bytes arrive intact, but an item in utf8 is read as such.
  function itemBytes(item, field) {
    const text = item ? item[field] : undefined;
    if (typeof text !== "string") return new Uint8Array(0);
    return item.encoding === "utf8" ? textEncoder.encode(text) : fromBase64(text);
  }

  function kvEntry(raw) {
    return { raw, key: itemBytes(raw, "key"), value: itemBytes(raw, "value") };
  }

  async function scan(ev) {
    if (ev) ev.preventDefault();
    const keyText = $("kv-key").value;
    const prefix = $("kv-prefix-mode").checked;
    let limit = parseInt($("kv-limit").value, 10);
    if (!Number.isFinite(limit) || limit < 1) limit = 50;
    limit = Math.min(limit, 1000);
    $("kv-limit").value = String(limit);
    const consistency = $("kv-consistency").value;
    if (!keyText && !prefix) {
      showKvError(new Error("Give a key, or tick \u201cprefix\u201d to list every key."));
      return;
    }
    const params = new URLSearchParams({
      key: toBase64(textEncoder.encode(keyText)), prefix: String(prefix), limit: String(limit),
      consistency, encoding: "base64",
    });
    const seq = ++kv.scanSeq;
    kv.consistency = consistency;
    $("kv-count").textContent = "Scanning…";
    let body;
    try {
      body = await getJSON(`/v1/kv/range?${params}`);
    } catch (e) {
      if (!isFetchError(e)) throw e;
      if (seq !== kv.scanSeq) return;
      showKvError(e);
      $("kv-count").textContent = "The scan failed.";
      return;
    }
    if (seq !== kv.scanSeq) return;  // a newer scan was started meanwhile
    showKvError(null);
    kv.rows = (Array.isArray(body.kvs) ? body.kvs : []).map(kvEntry);
    renderKvRows();
    const count = typeof body.count === "number" ? body.count : kv.rows.length;
    const rev = body.header ? ` at revision ${fmtInt(body.header.revision)}` : "";
    $("kv-count").textContent = kv.rows.length
      ? `${plural(kv.rows.length, "key", "keys")} shown of ${fmtInt(count)}${rev}` + (body.more ? " — raise the limit to see more" : "")
      : `No keys${prefix ? " with this prefix" : " by this name"}${rev}.`;
    if (kv.selected) {
      const again = kv.rows.find((r) => r.raw.key === kv.selected.raw.key);
      if (again) select(again);
    }
  }

  function renderKvRows() {
    const tbody = $("kv-rows");
    tbody.replaceChildren();
    for (const r of kv.rows) {
      const key = shortForm(r.key, 120);
      const value = shortForm(r.value, 80);
      const tr = el("tr", { attrs: { "data-testid": "kv-row", "data-key": key.text, tabindex: "0" } });
      tr.append(el("td", { cls: "key" + (key.binary ? " esc" : ""), text: key.text, attrs: { title: key.text } }));
      const vcell = el("td", { cls: "val" + (value.binary ? " binary" : "") });
      vcell.textContent = value.binary ? `binary, ${fmtBytes(r.value.length)}` : value.text;
      tr.append(vcell);
      tr.append(el("td", { cls: "num", text: fmtInt(r.raw.mod_revision) }));
      tr.append(el("td", { cls: "num", text: fmtInt(r.raw.version) }));
      tr.addEventListener("click", () => select(r));
      tr.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          select(r);
        }
      });
      if (kv.selected && kv.selected.raw.key === r.raw.key) tr.classList.add("selected");
      tbody.append(tr);
    }
  }

  function renderValue() {
    const r = kv.selected;
    if (!r) return;
    const bytes = r.value;
    const text = asText(bytes);
    const pre = $("kv-value");
    const kind = $("kv-value-kind");
    let shown = null;
    if (kv.view === "text" && text !== null) {
      shown = text;
      try {
        const parsed = JSON.parse(text);
        if (parsed !== null && typeof parsed === "object") {
          shown = JSON.stringify(parsed, null, 2);
          kind.textContent = `JSON · ${fmtBytes(bytes.length)}`;
        } else {
          kind.textContent = `text · ${fmtBytes(bytes.length)}`;
        }
      } catch {
        kind.textContent = `text · ${fmtBytes(bytes.length)}`;
      }
      if (shown.length > VALUE_SHOW_BYTES) shown = shown.slice(0, VALUE_SHOW_BYTES) + "\n… (truncated)";
      pre.dataset.mode = "text";
    } else {
      shown = hexDump(bytes, VALUE_SHOW_BYTES) + (bytes.length > VALUE_SHOW_BYTES ? "\n… (truncated)" : "");
      if (!bytes.length) shown = "(empty)";
      kind.textContent = `${text === null ? "binary" : "text"} · ${fmtBytes(bytes.length)} · hex`;
      pre.dataset.mode = "hex";
    }
    pre.textContent = shown === "" ? "(empty)" : shown;
    for (const b of $("kv-view").querySelectorAll("button")) {
      b.classList.toggle("on", b.dataset.view === (pre.dataset.mode === "hex" ? "hex" : "text"));
      b.disabled = b.dataset.view === "text" && text === null;
    }
  }

  function select(r) {
    const changed = !kv.selected || kv.selected.raw.key !== r.raw.key;
    kv.selected = r;
    if (changed) kv.view = asText(r.value) === null ? "hex" : "text";
    for (const tr of $("kv-rows").children) tr.classList.remove("selected");
    const idx = kv.rows.indexOf(r);
    if (idx >= 0 && $("kv-rows").children[idx]) $("kv-rows").children[idx].classList.add("selected");
    $("kv-detail").hidden = false;
    $("kv-detail").closest(".kv-body").classList.add("with-detail");
    const keyText = asText(r.key);
    const keyEl = $("kv-detail-key");
    keyEl.textContent = keyText !== null ? keyText : escaped(r.key);
    keyEl.classList.toggle("esc", keyText === null);
    const meta = $("kv-meta");
    meta.replaceChildren();
    const when = toDate(r.raw.timestamp);
    const lease = idText(r.raw.lease);
    for (const [label, value] of [
      ["Created at rev", fmtInt(r.raw.create_revision)],
      ["Modified at rev", fmtInt(r.raw.mod_revision)],
      ["Version", fmtInt(r.raw.version)],
      ["Lease", lease && lease !== "0" ? lease : "none"],
      ["Written", when ? when.toLocaleString("en-GB", { hour12: false }) : "—"],
      ["Size", fmtBytes(r.value.length)],
    ]) {
      meta.append(el("div", {}, el("dt", { text: label }), el("dd", { text: value })));
    }
    renderValue();
    loadHistory(r);
  }

  async function loadHistory(r) {
    const seq = ++kv.historySeq;
    const tbody = $("kv-history-rows");
    const note = $("kv-history-note");
    note.textContent = "Loading history…";
    // History at the same level as the scan, so it works without a leader when asked to.
    const params = new URLSearchParams({ key: toBase64(r.key), limit: "50", encoding: "base64",
                                         consistency: kv.consistency });
    let body;
    try {
      body = await getJSON(`/v1/kv/history?${params}`);
    } catch (e) {
      if (!isFetchError(e)) throw e;
      if (seq !== kv.historySeq) return;
      tbody.replaceChildren();
      note.textContent = `History unavailable: ${describe(e)}`;
      return;
    }
    if (seq !== kv.historySeq) return;
    const events = (Array.isArray(body.events) ? body.events : [])
      .slice().sort((a, b) => (b.revision ?? 0) - (a.revision ?? 0));
    tbody.replaceChildren();
    for (const e of events) {
      const item = e.kv || {};
      const value = itemBytes(item, "value");
      const type = String(e.type || "");
      const short = type === "delete" ? { text: "(deleted)", binary: false } : shortForm(value, 60);
      const tr = el("tr", { attrs: { "data-testid": "kv-history-row", "data-type": type } });
      tr.append(el("td", { text: type }));
      tr.append(el("td", { cls: "num", text: fmtInt(e.revision ?? item.mod_revision) }));
      tr.append(el("td", { cls: "val" + (short.binary ? " binary" : ""),
                           text: short.binary ? `binary, ${fmtBytes(value.length)}` : short.text,
                           attrs: { title: short.text } }));
      tr.append(el("td", { text: fmtClock(item.timestamp) }));
      tbody.append(tr);
    }
    note.textContent = events.length
      ? `${plural(events.length, "change", "changes")}, newest first` + (body.more ? " (older ones not shown)" : "")
      : "No history kept for this key (compacted?).";
  }

  function closeDetail() {
    kv.selected = null;
    kv.historySeq++;
    $("kv-detail").hidden = true;
    $("kv-detail").closest(".kv-body").classList.remove("with-detail");
    for (const tr of $("kv-rows").children) tr.classList.remove("selected");
  }

  // ---------------------------------------------------------------- theme

  const THEMES = ["auto", "dark", "light"];
  function applyTheme(theme) {
    if (theme === "auto") delete document.documentElement.dataset.theme;
    else document.documentElement.dataset.theme = theme;
    $("theme-toggle").textContent = `theme: ${theme}`;
  }
  function storedTheme() {
    try {
      const t = localStorage.getItem("quorumkv.theme");
      return THEMES.includes(t) ? t : "auto";
    } catch {
      return "auto";
    }
  }

  // ---------------------------------------------------------------- start

  function start() {
    let theme = storedTheme();
    applyTheme(theme);
    $("theme-toggle").addEventListener("click", () => {
      theme = THEMES[(THEMES.indexOf(theme) + 1) % THEMES.length];
      applyTheme(theme);
      try {
        localStorage.setItem("quorumkv.theme", theme);
      } catch {
        // Storage may be disabled; the choice then lasts until the page is reloaded.
      }
    });

    throughput = new LineChart($("chart-throughput"), $("legend-throughput"), [
      { key: "reads", label: "reads/s", cls: "c-reads", area: true },
      { key: "writes", label: "writes/s", cls: "c-writes", area: true },
      { key: "errors", label: "errors/s", cls: "c-errors" },
    ], fmtRate, fmtAxis);
    latency = new LineChart($("chart-latency"), $("legend-latency"), [
      { key: "read_p50_ms", label: "read p50", cls: "c-reads" },
      { key: "read_p99_ms", label: "read p99", cls: "c-reads", dashed: true },
      { key: "write_p50_ms", label: "write p50", cls: "c-writes" },
      { key: "write_p99_ms", label: "write p99", cls: "c-writes", dashed: true },
    ], fmtMs, fmtAxis);

    for (const b of $("window-buttons").querySelectorAll("button")) {
      b.addEventListener("click", () => {
        state.window = Number(b.dataset.window);
        for (const o of $("window-buttons").querySelectorAll("button")) o.classList.toggle("on", o === b);
        throughput.draw();
        latency.draw();
      });
    }
    for (const b of $("event-filter").querySelectorAll("button")) {
      b.addEventListener("click", () => applyEventFilter(b.dataset.filter));
    }
    $("kv-form").addEventListener("submit", scan);
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    renderSignedIn();
    $("kv-detail-close").addEventListener("click", closeDetail);
    for (const b of $("kv-view").querySelectorAll("button")) {
      b.addEventListener("click", () => {
        kv.view = b.dataset.view;
        renderValue();
      });
    }

    every(STATUS_POLL_MS, pollStatus);
    every(EVENTS_POLL_MS, pollEvents);
    every(STATS_POLL_MS, pollStats);
    // The "updated … ago" texts age between answers too.
    setInterval(() => {
      renderConn();
      if (state.statusError) renderBanner();
    }, 1000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
