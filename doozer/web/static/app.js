// doozer web viewer. Hand-written, no dependencies; the WebSocket protocol is
// documented at the top of doozer/web/__init__.py.
"use strict";

(() => {
  const ROW_H = 24;
  const FLASH_MS = 1600;
  const FEED_MAX = 200;
  const STALE_MS = 6000; // no message for this long (status comes every second): reconnect
  const BACKOFF_MIN = 250;
  const BACKOFF_MAX = 8000;
  const SECRET_KEY = "doozer-secret";

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // ---- the tree model ------------------------------------------------------

  const parentOf = (p) => {
    const i = p.lastIndexOf("/");
    return i > 0 ? p.slice(0, i) : "/";
  };
  const join = (dir, name) => (dir === "/" ? "/" + name : dir + "/" + name);
  const byteOrder = (a, b) => (a < b ? -1 : a > b ? 1 : 0); // names are ASCII

  class Tree {
    constructor() {
      this.files = new Map(); // path -> {rev, len, value | value_b64, cut}
      this.dirs = new Map([["/", new Set()]]); // dir -> child names
      this.counts = new Map([["/", 0]]); // dir -> files below it
      this.sorted = new Map(); // dir -> sorted child names (cache)
      this.allSorted = null; // every file path, sorted (cache)
    }
    set(path, f) {
      const had = this.files.has(path);
      this.files.set(path, f);
      if (had) return false;
      this.allSorted = null;
      let child = path;
      let dir = parentOf(path);
      for (;;) {
        let kids = this.dirs.get(dir);
        const isNew = kids === undefined;
        if (isNew) {
          kids = new Set();
          this.dirs.set(dir, kids);
          this.counts.set(dir, 0);
        }
        kids.add(child.slice(child.lastIndexOf("/") + 1));
        this.sorted.delete(dir);
        if (!isNew || dir === "/") break;
        child = dir;
        dir = parentOf(dir);
      }
      for (let d = parentOf(path); ; d = parentOf(d)) {
        this.counts.set(d, this.counts.get(d) + 1);
        if (d === "/") break;
      }
      return true;
    }
    del(path) {
      if (!this.files.delete(path)) return false;
      this.allSorted = null;
      for (let d = parentOf(path); ; d = parentOf(d)) {
        this.counts.set(d, this.counts.get(d) - 1);
        if (d === "/") break;
      }
      // Directories are implicit: the last file out takes its directory with it.
      let child = path;
      let dir = parentOf(path);
      for (;;) {
        const kids = this.dirs.get(dir);
        kids.delete(child.slice(child.lastIndexOf("/") + 1));
        this.sorted.delete(dir);
        if (kids.size > 0 || dir === "/") break;
        this.dirs.delete(dir);
        this.counts.delete(dir);
        this.sorted.delete(dir);
        child = dir;
        dir = parentOf(dir);
      }
      return true;
    }
    children(dir) {
      let s = this.sorted.get(dir);
      if (s === undefined) {
        s = Array.from(this.dirs.get(dir) || []).sort(byteOrder);
        this.sorted.set(dir, s);
      }
      return s;
    }
    paths() {
      if (this.allSorted === null) this.allSorted = Array.from(this.files.keys()).sort(byteOrder);
      return this.allSorted;
    }
  }

  // ---- globs, as in the protocol: ? * ** ------------------------------------

  function globRegex(glob) {
    let re = "^";
    for (let i = 0; i < glob.length; i++) {
      const c = glob[i];
      if (c === "*") {
        if (glob[i + 1] === "*") {
          re += ".*";
          i++;
        } else re += "[^/]*";
      } else if (c === "?") re += "[^/]";
      else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
    }
    return new RegExp(re + "$");
  }

  function makeFilter(text) {
    text = text.trim();
    if (!text) return null;
    if (text.startsWith("/")) {
      const re = globRegex(text);
      return (p) => re.test(p);
    }
    const needle = text.toLowerCase();
    return (p) => p.toLowerCase().includes(needle);
  }

  // ---- values ---------------------------------------------------------------

  function b64bytes(s) {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  const hex2 = (b) => b.toString(16).padStart(2, "0");

  function fmtBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1 << 20) return (n / 1024).toFixed(n < 10240 ? 1 : 0) + " KiB";
    return (n / (1 << 20)).toFixed(1) + " MiB";
  }

  function preview(f) {
    if (f.value !== undefined) {
      if (f.len === 0) return { cls: "empty", text: "empty" };
      let t = f.value.length > 400 ? f.value.slice(0, 400) : f.value;
      t = t.replace(/\r?\n/g, " ⏎ ").replace(/\t/g, " ⇥ ");
      return { cls: "text", text: t, more: f.cut };
    }
    const bytes = b64bytes(f.value_b64);
    const shown = Array.from(bytes.slice(0, 32), hex2).join(" ");
    return { cls: "bin", text: "bin " + shown, more: f.len > 32 };
  }

  function hexdump(bytes, max) {
    const lines = [];
    const n = Math.min(bytes.length, max);
    for (let off = 0; off < n; off += 16) {
      const row = bytes.slice(off, Math.min(off + 16, n));
      let h = "";
      let a = "";
      for (let i = 0; i < 16; i++) {
        h += i < row.length ? hex2(row[i]) + " " : "   ";
        if (i === 7) h += " ";
        if (i < row.length) a += row[i] >= 32 && row[i] < 127 ? String.fromCharCode(row[i]) : ".";
      }
      lines.push(off.toString(16).padStart(8, "0") + "  " + h + " |" + a + "|");
    }
    if (bytes.length > n) lines.push(`… ${fmtBytes(bytes.length - n)} more`);
    return lines.join("\n");
  }

  // ---- state ------------------------------------------------------------------

  const S = {
    ws: null,
    wsOpen: false,
    state: "connecting",
    attempt: 0,
    retryTimer: null,
    retryAt: 0,
    lastMsg: 0,
    incarnation: null,
    tree: null, // the live tree, at S.rev
    rev: 0,
    oldest: 1,
    loading: null, // a tree being loaded: {tree, rev, count}
    needAuth: false,
    // history
    mode: "live", // or "hist"
    histTree: null,
    histRev: 0,
    at: null, // {id, rev, tree}: an `at` in flight
    // view
    open: new Set(["/"]),
    filter: null,
    selected: null,
    flashes: new Map(), // path -> time it changed
    reqSeq: 0,
    gets: new Map(), // id -> callback
    feed: [],
    status: null,
    stats: { connects: 0, loads: 0, catchups: 0, events: 0, gaps: 0 },
  };
  window.doozerViewer = S; // for tests and curious operators

  // ---- connection ----------------------------------------------------------------

  function setState(state, text) {
    S.state = state;
    const c = $("conn");
    c.dataset.state = state;
    c.textContent = text;
  }

  function banner(text, kind, retry) {
    const b = $("banner");
    if (!text) {
      b.hidden = true;
      return;
    }
    b.hidden = false;
    b.className = kind || "";
    $("banner-text").textContent = text;
    $("retry").hidden = !retry;
  }

  function send(obj) {
    if (S.ws && S.wsOpen) S.ws.send(JSON.stringify(obj));
  }

  function connect() {
    clearTimeout(S.retryTimer);
    S.retryTimer = null;
    setState("connecting", S.tree ? "reconnecting…" : "connecting…");
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      scheduleReconnect("cannot open a WebSocket: " + e.message);
      return;
    }
    S.ws = ws;
    S.wsOpen = false;
    ws.onopen = () => {
      if (S.ws !== ws) return;
      S.wsOpen = true;
      S.lastMsg = Date.now();
      S.stats.connects++;
    };
    ws.onmessage = (e) => {
      if (S.ws !== ws) return;
      S.lastMsg = Date.now();
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      handle(msg);
    };
    ws.onclose = (e) => {
      if (S.ws !== ws) return;
      S.ws = null;
      S.wsOpen = false;
      S.loading = null;
      S.gets.clear();
      const why = e.reason ? `${e.reason} (${e.code})` : e.code === 1006 ? "connection lost" : `closed (${e.code})`;
      scheduleReconnect(why);
    };
  }

  function dropSocket(why) {
    const ws = S.ws;
    if (!ws) return;
    S.ws = null;
    S.wsOpen = false;
    S.loading = null;
    try {
      ws.close();
    } catch (e) {
      /* already closing */
    }
    scheduleReconnect(why);
  }

  function scheduleReconnect(why) {
    if (S.retryTimer) return;
    const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** S.attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    S.attempt++;
    S.retryAt = Date.now() + delay;
    setState("down", "disconnected");
    const tick = () => {
      if (!S.retryTimer) return;
      const left = Math.max(0, Math.ceil((S.retryAt - Date.now()) / 1000));
      banner(`Disconnected from the node: ${why}. Retrying in ${left} s (attempt ${S.attempt}); updates will catch up from rev ${S.rev}.`, "", true);
    };
    S.retryTimer = setTimeout(() => {
      S.retryTimer = null;
      connect();
    }, delay);
    tick();
    const countdown = setInterval(() => (S.retryTimer ? tick() : clearInterval(countdown)), 500);
  }

  // A connection that has gone silent (no status for a while) is as good as dead.
  setInterval(() => {
    if (S.ws && S.wsOpen && !S.needAuth && Date.now() - S.lastMsg > STALE_MS) dropSocket("no word from the node");
  }, 1000);

  function subscribe() {
    if (S.tree && S.incarnation === S.helloIncarnation) send({ op: "sub", from: S.rev + 1 });
    else send({ op: "sub" });
    S.incarnation = S.helloIncarnation;
    setState("loading", "syncing…");
  }

  function handle(m) {
    switch (m.op) {
      case "hello":
        S.helloIncarnation = m.incarnation;
        S.oldest = m.oldest;
        $("node-id").textContent = m.node.slice(0, 12);
        $("node-id").title = m.node;
        S.needAuth = m.auth;
        if (m.auth) {
          const saved = sessionStorage.getItem(SECRET_KEY);
          if (saved !== null) send({ op: "auth", secret: saved });
          else askSecret(false);
        } else subscribe();
        break;
      case "auth":
        if (m.ok) {
          S.needAuth = false;
          $("auth").open && $("auth").close();
          subscribe();
        } else {
          sessionStorage.removeItem(SECRET_KEY);
          askSecret(true);
        }
        break;
      case "load":
        S.loading = { tree: new Tree(), rev: m.rev, count: m.count };
        S.oldest = m.oldest;
        break;
      case "files":
        if (S.loading) {
          for (const f of m.files) S.loading.tree.set(f.path, f);
          if (S.loading.count) setState("loading", `loading ${S.loading.tree.files.size}/${S.loading.count}`);
        }
        break;
      case "loaded":
        if (!S.loading) break;
        S.tree = S.loading.tree;
        S.rev = m.rev;
        S.loading = null;
        S.stats.loads++;
        S.feed = [];
        for (const e of m.recent || []) pushFeed(e, false);
        synced(false);
        dirty.rows = dirty.feed = dirty.header = true;
        render();
        break;
      case "catchup":
        S.stats.catchups++;
        synced(true, m.from);
        break;
      case "evs":
        applyEvents(m.events);
        break;
      case "status":
        S.status = m;
        if (m.oldest) S.oldest = m.oldest;
        dirty.cluster = dirty.chart = dirty.slider = dirty.header = true;
        schedule();
        break;
      case "at":
        onAt(m);
        break;
      case "value": {
        const cb = S.gets.get(m.id);
        S.gets.delete(m.id);
        if (cb) cb(m);
        break;
      }
      case "error":
        onError(m);
        break;
    }
  }

  function synced(caughtUp, from) {
    S.attempt = 0;
    setState("live", "live");
    if (S.stats.connects > 1) {
      banner(caughtUp ? `Reconnected; caught up from rev ${from}.` : "Reconnected; the history had moved on, so the whole tree was reloaded.", "info", false);
      setTimeout(() => S.state === "live" && banner(null), 4000);
    } else banner(null);
    if (S.at && S.at.id) requestAt(S.at.rev); // lost with the socket
  }

  function onError(m) {
    if (m.code === "PERMISSION") {
      S.needAuth = true;
      askSecret(false);
      return;
    }
    if (S.at && m.id === S.at.id) {
      banner(`Cannot show rev ${S.at.rev}: ${m.detail}`, "", false);
      S.at = null;
      goLive();
      return;
    }
    const cb = S.gets.get(m.id);
    if (cb) {
      S.gets.delete(m.id);
      cb(null, m);
    }
  }

  function askSecret(wrong) {
    setState("locked", "locked");
    $("auth-error").hidden = !wrong;
    const d = $("auth");
    if (!d.open) d.showModal();
    $("auth-secret").focus();
  }

  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = $("auth-secret").value;
    sessionStorage.setItem(SECRET_KEY, v);
    send({ op: "auth", secret: v });
  });
  $("auth").addEventListener("cancel", (e) => e.preventDefault()); // nothing to see without it

  // ---- live events ------------------------------------------------------------------

  function applyEvents(events) {
    const t = S.tree;
    if (!t) return;
    const now = performance.now();
    for (const e of events) {
      if (e.rev <= S.rev) continue; // already in the load we have
      if (e.rev !== S.rev + 1) {
        // A gap would mean a missed update: start over from what we have.
        S.stats.gaps++;
        send({ op: "sub", from: S.rev + 1 });
        return;
      }
      S.rev = e.rev;
      S.stats.events++;
      let structural;
      if (e.flags & 8) structural = t.del(e.path);
      else structural = t.set(e.path, e);
      if (structural) dirty.rows = true;
      S.flashes.set(e.path, now);
      for (let d = parentOf(e.path); d !== "/"; d = parentOf(d)) S.flashes.set(d, now);
      pushFeed(e, true);
      if (e.path === S.selected && S.mode === "live") dirty.inspector = true;
    }
    dirty.feed = dirty.header = dirty.slider = dirty.tree = true;
    schedule();
  }

  function pushFeed(e, fresh) {
    S.feed.unshift({ e, fresh, at: performance.now() });
    if (S.feed.length > FEED_MAX) S.feed.length = FEED_MAX;
  }

  // ---- history --------------------------------------------------------------------

  let atTimer = null;

  function onSlider() {
    const v = Number($("slider").value);
    if (v >= S.rev) {
      goLive();
      return;
    }
    S.at = { id: 0, rev: v, tree: null }; // asked for once the slider rests a moment
    $("slider-label").textContent = `rev ${v} …`;
    $("live-btn").disabled = false;
    clearTimeout(atTimer);
    atTimer = setTimeout(() => requestAt(v), 90);
  }

  function requestAt(rev) {
    S.at = { id: ++S.reqSeq, rev, tree: new Tree() };
    send({ op: "at", id: S.at.id, rev });
  }

  function onAt(m) {
    if (!S.at || m.id !== S.at.id) return;
    for (const f of m.files) S.at.tree.set(f.path, f);
    if (!m.done) return;
    S.histTree = S.at.tree;
    S.histRev = m.rev;
    S.at = null;
    if (S.mode !== "hist") {
      S.mode = "hist";
      document.body.classList.add("hist");
    }
    resetRows();
    dirty.slider = dirty.inspector = true;
    schedule();
  }

  function goLive() {
    clearTimeout(atTimer);
    S.at = null;
    if (S.mode === "live") {
      dirty.slider = true;
      schedule();
      return;
    }
    S.mode = "live";
    S.histTree = null;
    document.body.classList.remove("hist");
    resetRows();
    dirty.slider = dirty.inspector = true;
    schedule();
  }

  let dragging = false;
  $("slider").addEventListener("input", onSlider);
  $("slider").addEventListener("pointerdown", () => (dragging = true));
  window.addEventListener("pointerup", () => (dragging = false));
  $("live-btn").addEventListener("click", goLive);

  // ---- rendering -------------------------------------------------------------------

  const dirty = { rows: true, tree: true, feed: true, cluster: true, chart: true, header: true, slider: true, inspector: false };
  let frame = 0;
  let flashTimer = null;
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(render);
  };

  let rows = []; // the visible rows: {p, depth, dir}
  let rendered = new Map(); // key -> row element in the DOM

  const viewTree = () => (S.mode === "hist" ? S.histTree : S.tree);

  function resetRows() {
    dirty.rows = dirty.tree = true;
    for (const e of rendered.values()) e.remove();
    rendered = new Map();
  }

  function computeRows() {
    const t = viewTree();
    const out = [];
    if (!t) return out;
    if (S.filter) {
      for (const p of t.paths()) if (S.filter(p)) out.push({ p, depth: 0, dir: false, flat: true });
      return out;
    }
    const walk = (dir, depth) => {
      for (const name of t.children(dir)) {
        const p = join(dir, name);
        if (t.dirs.has(p)) {
          out.push({ p, depth, dir: true });
          if (S.open.has(p)) walk(p, depth + 1);
        } else out.push({ p, depth, dir: false });
      }
    };
    walk("/", 0);
    return out;
  }

  function rowSig(r, t, now) {
    const fl = S.flashes.get(r.p);
    const flashing = fl !== undefined && now - fl < FLASH_MS ? fl : 0;
    if (r.dir) return `d${r.depth}|${S.open.has(r.p)}|${t.counts.get(r.p)}|${flashing}|${S.selected === r.p}`;
    const f = t.files.get(r.p);
    return `f${r.depth}|${r.flat ? 1 : 0}|${f.rev}|${flashing}|${S.selected === r.p}`;
  }

  function makeRow(r, t, now) {
    const row = el("div", "row " + (r.dir ? "dir" : "file"));
    row.dataset.path = r.p;
    const name = el("span", "name");
    name.style.paddingLeft = r.depth * 16 + "px";
    const tw = el("span", "tw", r.dir ? (S.open.has(r.p) ? "▾" : "▸") : "");
    name.appendChild(tw);
    if (r.flat) {
      const i = r.p.lastIndexOf("/");
      name.appendChild(el("span", "pre", r.p.slice(0, i + 1)));
      name.appendChild(el("span", "nm", r.p.slice(i + 1)));
    } else name.appendChild(el("span", "nm", r.p.slice(r.p.lastIndexOf("/") + 1)));
    name.title = r.p;
    row.appendChild(name);
    if (r.dir) {
      const n = t.counts.get(r.p);
      row.appendChild(el("span", "rev", ""));
      row.appendChild(el("span", "size", n === 1 ? "1 file" : `${n} files`));
      row.appendChild(el("span", "val dir", ""));
    } else {
      const f = t.files.get(r.p);
      row.appendChild(el("span", "rev", String(f.rev)));
      row.appendChild(el("span", "size", fmtBytes(f.len)));
      const pv = preview(f);
      const val = el("span", "val " + pv.cls, pv.text);
      if (pv.more) val.appendChild(el("span", "more", " … more"));
      row.appendChild(val);
    }
    if (S.selected === r.p) row.classList.add("sel");
    const fl = S.flashes.get(r.p);
    if (fl !== undefined && now - fl < FLASH_MS && S.mode === "live") {
      row.classList.add("flash");
      row.style.animationDelay = -(now - fl) + "ms"; // a re-made row keeps its place in the fade
    }
    return row;
  }

  function renderTree() {
    const t = viewTree();
    const box = $("tree");
    if (dirty.rows) {
      rows = computeRows();
      dirty.rows = false;
      $("tree-spacer").style.height = rows.length * ROW_H + "px";
      const empty = $("tree-empty");
      empty.hidden = rows.length > 0;
      if (!t) empty.textContent = "loading the tree…";
      else if (S.filter) empty.textContent = "no file matches the filter";
      else empty.textContent = "the tree is empty";
    }
    if (!t) return;
    const now = performance.now();
    const first = Math.max(0, Math.floor(box.scrollTop / ROW_H) - 8);
    const last = Math.min(rows.length, Math.ceil((box.scrollTop + box.clientHeight) / ROW_H) + 8);
    const next = new Map();
    const holder = $("tree-rows");
    for (let i = first; i < last; i++) {
      const r = rows[i];
      const key = (r.dir ? "d" : "f") + r.p;
      const sig = rowSig(r, t, now);
      let row = rendered.get(key);
      if (row && row._sig !== sig) {
        row.remove();
        row = undefined;
      }
      if (!row) {
        row = makeRow(r, t, now);
        row._sig = sig;
        holder.appendChild(row);
      }
      row.style.transform = `translateY(${i * ROW_H}px)`;
      rendered.delete(key);
      next.set(key, row);
    }
    for (const row of rendered.values()) row.remove();
    rendered = next;
    for (const [p, at] of S.flashes) if (now - at >= FLASH_MS) S.flashes.delete(p);
  }

  function renderHeader() {
    $("rev").textContent = S.tree ? String(S.rev) : "–";
    $("nfiles").textContent = S.tree ? String(S.tree.files.size) : "–";
    const name = S.tree && S.tree.files.get("/ctl/name");
    $("cluster-name").textContent = name && name.value !== undefined ? `cluster ${name.value}` : "";
    document.title = S.tree ? `doozer · rev ${S.rev}` : "doozer";
    $("card-rev").textContent = S.tree ? String(S.rev) : "–";
    $("card-oldest").textContent = S.tree ? String(S.oldest) : "–";
  }

  function renderSlider() {
    const s = $("slider");
    const max = Math.max(S.rev, 1);
    const min = Math.min(Math.max(S.oldest, 1), max);
    s.min = String(min);
    s.max = String(max);
    const live = S.mode === "live" && !S.at;
    if (live) {
      if (!dragging) s.value = String(max);
      $("slider-label").textContent = `live · rev ${S.rev}`;
    } else if (S.at) {
      $("slider-label").textContent = `rev ${S.at.rev} …`;
    } else {
      if (document.activeElement !== s) s.value = String(S.histRev);
      $("slider-label").textContent = `rev ${S.histRev} of ${S.rev}`;
    }
    s.title = `history window: rev ${min} to ${max}`;
    $("live-btn").disabled = live;
  }

  function renderFeed() {
    const ol = $("feed");
    const now = performance.now();
    ol.textContent = "";
    $("feed-empty").hidden = S.feed.length > 0;
    for (const item of S.feed.slice(0, 80)) {
      const { e, at } = item;
      if (item.fresh && now - at >= FLASH_MS) item.fresh = false;
      const li = el("li", item.fresh ? "new" : "");
      if (item.fresh) li.style.animationDelay = -(now - at) + "ms";
      li.dataset.path = e.path;
      li.appendChild(el("span", "frev", "#" + e.rev));
      li.appendChild(el("span", "op " + (e.flags & 8 ? "del" : "set"), e.flags & 8 ? "DEL" : "SET"));
      const p = el("span", "fp", e.path);
      if (!(e.flags & 8)) {
        const pv = preview(e);
        p.appendChild(el("span", "fv", "  " + pv.text.slice(0, 60)));
      }
      li.appendChild(p);
      li.title = `rev ${e.rev} ${e.flags & 8 ? "del" : "set"} ${e.path}`;
      ol.appendChild(li);
    }
  }

  function renderCluster() {
    const st = S.status;
    if (!st) return;
    const role = $("node-role");
    role.textContent = st.role;
    role.className = "role " + st.role;
    const byId = new Map(st.nodes.map((n) => [n.id, n]));
    const cal = $("cal");
    cal.textContent = "";
    for (const slot of Object.keys(st.cal).sort((a, b) => a - b)) {
      const who = st.cal[slot];
      const chip = el("span", "chip" + (who ? "" : " empty"));
      chip.appendChild(el("span", "k", `cal/${slot} `));
      chip.appendChild(document.createTextNode(who ? who.slice(0, 8) : "empty"));
      chip.title = who ? `${who} ${byId.has(who) ? byId.get(who).addr : ""}` : "an empty slot";
      cal.appendChild(chip);
    }
    const tb = $("nodes").tBodies[0];
    tb.textContent = "";
    const order = { leader: 0, member: 1, follower: 2 };
    const nodes = st.nodes.slice().sort((a, b) => (order[a.role] ?? 3) - (order[b.role] ?? 3) || byteOrder(a.id, b.id));
    for (const n of nodes) {
      const tr = el("tr");
      tr.dataset.node = n.id;
      const id = el("td", "", n.id.slice(0, 8));
      id.title = n.id;
      if (n.self) id.appendChild(el("span", "you", "you"));
      tr.appendChild(id);
      const addr = el("td", "", n.addr || "–");
      addr.title = n.addr || "";
      tr.appendChild(addr);
      const r = el("td");
      r.appendChild(el("span", "role " + n.role, n.role));
      tr.appendChild(r);
      const ap = el("td", "num", n.applied == null ? "–" : String(n.applied));
      if (n.applied != null && st.rev - n.applied > 0) ap.appendChild(el("span", "lag", ` −${st.rev - n.applied}`));
      tr.appendChild(ap);
      const alive = el("td", "alive");
      const word = n.alive === true ? "up" : n.alive === false ? "down" : "unknown";
      alive.appendChild(el("span", "dot " + (n.alive === true ? "up" : n.alive === false ? "down" : "")));
      alive.title = word;
      alive.dataset.alive = word;
      tr.appendChild(alive);
      tb.appendChild(tr);
    }
  }

  function renderChart() {
    const st = S.status;
    const c = $("rate");
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (c.width !== Math.round(w * dpr)) c.width = Math.round(w * dpr);
    if (c.height !== Math.round(h * dpr)) c.height = Math.round(h * dpr);
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const samples = st ? st.rate : [];
    const slots = 60;
    const peak = Math.max(1, ...samples);
    const mag = 10 ** Math.floor(Math.log10(peak));
    const top = [1, 2, 5, 10].map((k) => k * mag).find((v) => v >= peak);
    g.strokeStyle = "#262d38";
    g.lineWidth = 1;
    for (const f of [0.5, 1]) {
      const y = Math.round(h - f * (h - 6)) + 0.5;
      g.beginPath();
      g.moveTo(0, y);
      g.lineTo(w, y);
      g.stroke();
    }
    const bw = w / slots;
    const css = getComputedStyle(document.documentElement);
    g.fillStyle = css.getPropertyValue("--accent").trim() || "#5aa9ff";
    samples.slice(-slots).forEach((v, i, arr) => {
      const x = (slots - arr.length + i) * bw;
      const bh = (v / top) * (h - 6);
      g.globalAlpha = i === arr.length - 1 ? 1 : 0.7;
      g.fillRect(x + 1, h - bh, Math.max(1, bw - 2), bh);
    });
    g.globalAlpha = 1;
    const now = samples.length ? samples[samples.length - 1] : 0;
    $("rate-now").textContent = st ? String(now) : "–";
    $("rate-max").textContent = `max scale ${top} w/s`;
  }

  function renderInspector() {
    const box = $("inspector");
    if (!S.selected) {
      box.hidden = true;
      return;
    }
    const t = viewTree();
    const f = t && t.files.get(S.selected);
    box.hidden = false;
    $("insp-path").textContent = S.selected;
    const body = $("insp-body");
    const modeBtn = $("insp-mode");
    if (!f) {
      $("insp-meta").textContent = S.mode === "hist" ? `missing at rev ${S.histRev}` : "deleted";
      body.textContent = "";
      modeBtn.hidden = true;
      return;
    }
    const at = S.mode === "hist" ? S.histRev : null;
    $("insp-meta").textContent = `rev ${f.rev} · ${fmtBytes(f.len)} · ${f.value !== undefined ? "text" : "binary"}` + (at ? ` · as of rev ${at}` : "");
    const show = (full) => {
      if (full.value !== undefined) {
        modeBtn.hidden = true;
        body.textContent = full.value === "" ? "(empty)" : full.value;
      } else {
        modeBtn.hidden = false;
        const bytes = b64bytes(full.value_b64);
        body.textContent = S.inspB64 ? full.value_b64 : hexdump(bytes, 64 * 1024);
        modeBtn.textContent = S.inspB64 ? "hex" : "base64";
      }
    };
    if (!f.cut) {
      show(f);
      return;
    }
    show(f);
    body.textContent += "\n… loading the whole value";
    const path = S.selected;
    const id = ++S.reqSeq;
    S.gets.set(id, (v, err) => {
      if (S.selected !== path) return;
      if (err) body.textContent += `\n(${err.code}: ${err.detail})`;
      else show(v);
    });
    const req = { op: "get", id, path };
    if (at) req.rev = at;
    send(req);
  }

  function render() {
    frame = 0;
    if (dirty.tree || dirty.rows) {
      renderTree();
      dirty.tree = false;
    }
    if (dirty.header) {
      renderHeader();
      dirty.header = false;
    }
    if (dirty.slider) {
      renderSlider();
      dirty.slider = false;
    }
    if (dirty.feed) {
      renderFeed();
      dirty.feed = false;
    }
    if (dirty.cluster) {
      renderCluster();
      dirty.cluster = false;
    }
    if (dirty.chart) {
      renderChart();
      dirty.chart = false;
    }
    if (dirty.inspector) {
      dirty.inspector = false;
      renderInspector();
    }
    // keep fading highlights moving until they are done
    if ((S.flashes.size || S.feed.some((f) => f.fresh)) && !flashTimer) {
      flashTimer = setTimeout(() => {
        flashTimer = null;
        dirty.tree = dirty.feed = true;
        schedule();
      }, 300);
    }
  }

  // ---- interaction -------------------------------------------------------------------

  $("tree").addEventListener("scroll", () => {
    dirty.tree = true;
    schedule();
  });
  window.addEventListener("resize", () => {
    dirty.tree = dirty.chart = true;
    schedule();
  });

  $("tree-rows").addEventListener("click", (e) => {
    const row = e.target.closest(".row");
    if (!row) return;
    const p = row.dataset.path;
    if (row.classList.contains("dir")) {
      if (S.open.has(p)) S.open.delete(p);
      else S.open.add(p);
      dirty.rows = dirty.tree = true;
    } else {
      S.selected = S.selected === p ? null : p;
      S.inspB64 = false;
      dirty.tree = dirty.inspector = true;
    }
    schedule();
  });

  $("feed").addEventListener("click", (e) => {
    const li = e.target.closest("li");
    if (!li) return;
    select(li.dataset.path);
  });

  function select(p) {
    S.selected = p;
    S.inspB64 = false;
    for (let d = parentOf(p); d !== "/"; d = parentOf(d)) S.open.add(d);
    dirty.rows = dirty.tree = dirty.inspector = true;
    render();
    const i = rows.findIndex((r) => r.p === p && !r.dir);
    if (i >= 0) {
      const box = $("tree");
      if (i * ROW_H < box.scrollTop || (i + 1) * ROW_H > box.scrollTop + box.clientHeight) box.scrollTop = Math.max(0, i * ROW_H - box.clientHeight / 3);
    }
  }

  $("insp-close").addEventListener("click", () => {
    S.selected = null;
    dirty.tree = dirty.inspector = true;
    schedule();
  });
  $("insp-mode").addEventListener("click", () => {
    S.inspB64 = !S.inspB64;
    dirty.inspector = true;
    schedule();
  });

  let filterTimer = null;
  $("filter").addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      try {
        S.filter = makeFilter($("filter").value);
        $("filter").classList.remove("bad");
      } catch (e) {
        $("filter").classList.add("bad");
        return;
      }
      $("tree").scrollTop = 0;
      dirty.rows = dirty.tree = true;
      schedule();
    }, 120);
  });

  $("expand-all").addEventListener("click", () => {
    const t = viewTree();
    if (t) for (const d of t.dirs.keys()) S.open.add(d);
    dirty.rows = dirty.tree = true;
    schedule();
  });
  $("collapse-all").addEventListener("click", () => {
    S.open = new Set(["/"]);
    dirty.rows = dirty.tree = true;
    schedule();
  });

  $("retry").addEventListener("click", () => {
    if (S.retryTimer) {
      clearTimeout(S.retryTimer);
      S.retryTimer = null;
      connect();
    }
  });
  window.addEventListener("online", () => {
    if (S.retryTimer) {
      clearTimeout(S.retryTimer);
      S.retryTimer = null;
      connect();
    }
  });

  connect();
  render();
})();
