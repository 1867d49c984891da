"use strict";
// sniffer report: draws the sequence diagram of the model above as SVG, only the rows in view
// (and a margin), so large captures stay smooth; a click on an arrow shows its message.
(function () {
  const M = JSON.parse(document.getElementById("model").textContent);
  const A = M.arrows;
  const SVG = "http://www.w3.org/2000/svg";
  const ROW = 34, HEAD = 44, BLOCK_HEAD = 24, BLOCK_PAD = 8, GAP_ROW = 22, GAP_MS = 1000;
  // Up to this many rows everything is drawn; above it, the rows near the view.
  const DRAW_ALL = 2000, MARGIN = 1200;

  const el = (tag, attrs, parent) => {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  };
  const h = (tag, props, parent) => {
    const e = document.createElement(tag);
    for (const k in props) e[k] = props[k];
    if (parent) parent.appendChild(e);
    return e;
  };

  // ---- page skeleton ---------------------------------------------------------------------
  const header = h("header", {}, document.body);
  const h1 = h("h1", { textContent: M.source ? M.source : "sniffer report" }, header);
  const exchanges = A.filter((a) => a.req || a.pair === undefined).length;
  h("span", {
    className: "summary",
    textContent: `${A.length} messages, ${exchanges} exchanges, ${M.participants.length} participants` +
      (M.timed && A.length ? `, ${fmtMs(A.reduce((m, a) => Math.max(m, a.t_ms || 0), 0))}` : ""),
  }, h1);
  const tools = h("div", { className: "tools" }, header);
  const q = h("input", { type: "search", id: "q", placeholder: "search: path, participant, method, status (/)" }, tools);
  const who = select("who", "every participant", M.participants);
  const methods = [...new Set(A.map((a) => a.method).filter((m) => m && m !== "?"))].sort();
  const method = select("method", "every method", methods);
  const status = select("status", "every status", ["2xx", "3xx", "4xx", "5xx", "no response"]);
  const count = h("span", { className: "count", id: "count" }, tools);
  h("span", { className: "keys", textContent: "j/k or arrows: next/previous, p: its pair, Esc: close, /: search" }, tools);
  if (M.placeholders.length) {
    const d = h("details", { className: "vars" }, header);
    h("summary", { textContent: `${M.placeholders.length} placeholders` }, d);
    const t = h("table", {}, d);
    for (const [k, v] of M.placeholders) {
      const tr = h("tr", {}, t);
      h("td", { textContent: k }, tr);
      h("td", { textContent: v }, tr);
    }
  }
  const main = h("main", {}, document.body);
  const scroll = h("div", { id: "scroll", tabIndex: 0 }, main);
  const detail = h("aside", { id: "detail" }, main);

  function select(id, all, values) {
    const s = h("select", { id }, tools);
    h("option", { value: "", textContent: all }, s);
    for (const v of values) h("option", { value: v, textContent: v }, s);
    return s;
  }

  // ---- geometry --------------------------------------------------------------------------
  // Columns wide enough for the names and for most labels (the longest are cut, with the
  // whole text in their tooltip and the panel).
  const longest = Math.max(8, ...M.participants.map((p) => p.length));
  const labels = A.map((a) => a.label.length).sort((x, y) => x - y);
  const typical = labels.length ? labels[Math.floor(labels.length * 0.9)] : 0;
  const COL = Math.min(340, Math.max(170, longest * 8 + 40, typical * 6.8 + 40));
  const X = M.participants.map((_, i) => 40 + COL / 2 + i * COL);
  const WIDTH = 80 + COL * Math.max(1, M.participants.length);
  const blockOf = new Array(A.length).fill(-1);
  M.blocks.forEach((b, bi) => { for (let i = b.first; i <= b.last; i++) blockOf[i] = bi; });

  let shown = [];     // indexes of the arrows that pass the filters, in order
  let rows = [];      // {y, h, k: "a" | "b" | "g", i}
  let boxes = [];     // {y0, y1, b}
  let rowOf = new Map();
  let total = 0;

  function layout() {
    rows = []; boxes = []; rowOf = new Map();
    let y = 8, prevT = null, open = null;
    shown.forEach((i, k) => {
      const a = A[i];
      if (M.timed && a.t_ms !== undefined) {
        if (prevT !== null && a.t_ms - prevT > GAP_MS) {
          rows.push({ y, h: GAP_ROW, k: "g", i: a.t_ms - prevT });
          y += GAP_ROW;
        }
        prevT = a.t_ms;
      }
      const b = blockOf[i];
      if (b >= 0 && (open === null || open.b !== b)) {
        open = { y0: y, y1: 0, b };
        rows.push({ y, h: BLOCK_HEAD, k: "b", i: b });
        y += BLOCK_HEAD;
      }
      rowOf.set(i, rows.length);
      rows.push({ y, h: ROW, k: "a", i });
      y += ROW;
      const next = shown[k + 1];
      if (open && (next === undefined || blockOf[next] !== open.b)) {
        y += BLOCK_PAD;
        open.y1 = y;
        boxes.push(open);
        open = null;
        y += 4;
      }
    });
    total = y + 16;
  }

  // ---- filters ---------------------------------------------------------------------------
  function statusClass(s) {
    return s ? `${Math.floor(s / 100)}xx` : "no response";
  }
  function matches(a) {
    const p = a.pair !== undefined ? A[a.pair] : null;
    const names = [M.participants[a.src], M.participants[a.dst]];
    if (who.value && !names.includes(who.value)) return false;
    if (method.value && a.method !== method.value) return false;
    if (status.value && statusClass(a.status) !== status.value) return false;
    const words = q.value.toLowerCase().split(/\s+/).filter(Boolean);
    if (!words.length) return true;
    const hay = [a.label, a.url, a.served || "", p ? p.label : "", names.join(" "), String(a.status || ""), a.method, `[${a.n}]`]
      .join(" ").toLowerCase();
    return words.every((w) => hay.includes(w));
  }
  function refilter() {
    const keep = new Array(A.length).fill(false);
    A.forEach((a, i) => {
      if (matches(a)) {
        keep[i] = true;
        if (a.pair !== undefined) keep[a.pair] = true;
      }
    });
    shown = [];
    keep.forEach((k, i) => { if (k) shown.push(i); });
    count.textContent = shown.length === A.length ? `${A.length} messages` : `${shown.length} of ${A.length} messages`;
    layout();
    sizer.style.height = `${total}px`;
    drawn = null;
    render();
  }

  // ---- drawing ---------------------------------------------------------------------------
  const lanes = h("div", { id: "lanes" }, scroll);
  const laneSvg = el("svg", { width: WIDTH, height: HEAD }, lanes);
  M.participants.forEach((p, i) => {
    const g = el("g", { class: "participant", "data-name": p }, laneSvg);
    const w = Math.min(COL - 16, p.length * 8 + 24);
    el("rect", { x: X[i] - w / 2, y: 8, width: w, height: 28 }, g);
    el("text", { x: X[i], y: 22 }, g).textContent = p;
  });
  const sizer = h("div", { id: "sizer" }, scroll);
  sizer.style.width = `${WIDTH}px`;
  let svg = null;
  let drawn = null;   // [from, to) in px of what is drawn
  let selected = -1;
  let renders = 0;

  function firstRowAt(y) {
    let lo = 0, hi = rows.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (rows[mid].y + rows[mid].h <= y) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  function fit(text, px) {
    const n = Math.max(6, Math.floor(px / 6.8));
    return text.length > n ? text.slice(0, n - 1) + "\u2026" : text;
  }

  function drawArrow(g0, i, row) {
    const a = A[i];
    const cls = ["msg", a.req ? "req" : "resp"];
    if (!a.req && a.status) cls.push(`s${Math.floor(a.status / 100)}`);
    if (a.marks.length) cls.push("marked");
    if (i === selected) cls.push("sel");
    const g = el("g", { class: cls.join(" "), "data-i": i, "data-n": a.n }, g0);
    const x1 = X[a.src], x2 = X[a.dst], y = row.y + ROW - 9;
    const title = el("title", {}, g);
    title.textContent = `[${a.n}] ${a.label}`;
    if (x1 === x2) {
      el("path", { class: "self", d: `M${x1} ${y - 10} h34 v12 h-30`, "marker-end": "url(#ah)" }, g);
      el("path", { class: "hit", d: `M${x1} ${y - 10} h34 v12 h-30` }, g);
    } else {
      const dir = x2 > x1 ? 1 : -1;
      el("line", { x1, y1: y, x2: x2 - dir * 2, y2: y, "marker-end": "url(#ah)" }, g);
      el("line", { class: "hit", x1, y1: y, x2, y2: y }, g);
    }
    const span = Math.max(Math.abs(x2 - x1), COL) - 30;
    const label = el("text", { class: "label", x: x1 === x2 ? x1 + 60 : (x1 + x2) / 2, y: y - 6 }, g);
    label.textContent = (a.marks.length ? "\u26a0 " : "") + fit(a.label, span);
    const num = el("g", { class: "num" }, g);
    const w = 10 + String(a.n).length * 6;
    el("rect", { x: x1 - w / 2, y: y - 8, width: w, height: 16 }, num);
    el("text", { x: x1, y }, num).textContent = String(a.n);
  }

  function render() {
    const top = scroll.scrollTop;
    const view = scroll.clientHeight || 800;
    let from = 0, to = total;
    if (rows.length > DRAW_ALL) {
      if (drawn && top - MARGIN / 3 >= drawn[0] && top + view + MARGIN / 3 <= drawn[1]) return;
      from = Math.max(0, top - MARGIN);
      to = Math.min(total, top + view + MARGIN);
    } else if (drawn && drawn[0] === 0 && drawn[1] === total) {
      return;
    }
    drawn = [from, to];
    renders++;
    const next = el("svg", { id: "diagram", width: WIDTH, height: Math.max(1, to - from) });
    next.style.top = `${from}px`;
    const defs = el("defs", {}, next);
    const m = el("marker", { id: "ah", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" }, defs);
    el("path", { d: "M0 0 L10 5 L0 10 z", fill: "#2c3e5c" }, m);
    const g0 = el("g", { transform: `translate(0 ${-from})` }, next);
    X.forEach((x) => el("line", { class: "lifeline", x1: x, y1: from, x2: x, y2: to }, g0));
    const left = 14, right = WIDTH - 14;
    for (const b of boxes) {
      if (b.y1 < from || b.y0 > to) continue;
      const blk = M.blocks[b.b];
      const g = el("g", { class: "block", "data-first": A[blk.first].n }, g0);
      const xs = [A[blk.first].src, A[blk.first].dst].map((p) => X[p]);
      const x0 = Math.max(left, Math.min(...xs) - COL / 2 + 14), x1 = Math.min(right, Math.max(...xs) + COL / 2 - 14);
      el("rect", { class: "box", x: x0, y: b.y0 + 2, width: x1 - x0, height: b.y1 - b.y0 - 2 }, g);
      const tw = blk.label.length * 6.6 + 16;
      el("rect", { class: "tab", x: x0, y: b.y0 + 2, width: tw, height: 18 }, g);
      el("text", { x: x0 + 8, y: b.y0 + 11 }, g).textContent = blk.label;
    }
    for (let r = firstRowAt(from); r < rows.length && rows[r].y < to; r++) {
      const row = rows[r];
      if (row.k === "a") drawArrow(g0, row.i, row);
      else if (row.k === "g") {
        const g = el("g", { class: "gap" }, g0);
        el("line", { x1: 10, y1: row.y + row.h / 2, x2: WIDTH - 10, y2: row.y + row.h / 2 }, g);
        const t = el("text", { x: 70, y: row.y + row.h / 2 }, g);
        t.textContent = `${fmtMs(row.i)} later`;
      }
    }
    if (svg) svg.replaceWith(next); else sizer.appendChild(next);
    svg = next;
    if (!rows.length) {
      const e = el("text", { x: 20, y: 30 }, g0);
      e.textContent = "no message matches";
    }
  }

  let pending = false;
  scroll.addEventListener("scroll", () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  });
  window.addEventListener("resize", () => { drawn = null; render(); });

  // ---- the message panel -----------------------------------------------------------------
  function fmtMs(ms) {
    if (ms === undefined || ms === null) return "";
    if (ms < 1) return `${(ms * 1000).toFixed(0)} \u00b5s`;
    if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
  }
  function fmtSize(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
    if (n < 1073741824) return `${(n / 1048576).toFixed(1)} MiB`;
    return `${(n / 1073741824).toFixed(2)} GiB`;
  }

  function link(i, text) {
    const a = h("a", { textContent: text });
    a.addEventListener("click", () => choose(i, true));
    return a;
  }

  function showDetail(i) {
    const a = A[i];
    detail.textContent = "";
    detail.className = "open";
    detail.dataset.i = i;
    detail.dataset.n = a.n;
    const close = h("button", { className: "close", textContent: "\u00d7", title: "close (Esc)" }, detail);
    close.addEventListener("click", closeDetail);
    h("h2", { textContent: `[${a.n}] ${a.label}` }, detail);
    h("div", {
      className: "who",
      textContent: `${M.participants[a.src]} \u2192 ${M.participants[a.dst]}` + (a.req ? "  (request)" : "  (response)"),
    }, detail);
    const info = h("table", { className: "info" }, detail);
    const row = (k, v) => {
      const tr = h("tr", {}, info);
      h("td", { textContent: k }, tr);
      const td = h("td", {}, tr);
      if (typeof v === "string") td.textContent = v; else td.appendChild(v);
    };
    row("URL", a.url || "?");
    if (a.served) row("the service received", a.served + (a.via ? ` (via ${a.via})` : ""));
    if (a.pair !== undefined) {
      const p = A[a.pair];
      row(a.req ? "response" : "request", link(a.pair, `[${p.n}] ${p.label}`));
      const q0 = a.req ? a : p, r0 = a.req ? p : a;
      if (q0.t_ms !== undefined && r0.t_ms !== undefined) {
        row("exchange took", fmtMs(r0.t_ms + (r0.span_ms || 0) - q0.t_ms));
      }
    }
    if (a.t_ms !== undefined) {
      const at = a.unix_ms ? ` (${new Date(a.unix_ms).toISOString()})` : "";
      row("first byte", `+${fmtMs(a.t_ms)}${at}`);
      row("first to last byte", fmtMs(a.span_ms || 0));
      const k = shown.indexOf(i);
      const prev = k > 0 ? A[shown[k - 1]] : null;
      if (prev && prev.t_ms !== undefined) row("gap since the message before", fmtMs(a.t_ms - prev.t_ms));
    }
    if (a.size !== undefined) row("body", `${fmtSize(a.size)}${a.size >= 1024 ? ` (${a.size} bytes)` : ""}${a.truncated ? ", a preview shown" : ""}`);
    if (a.missing) row("body bytes not copied", `${a.missing} (counted by the kernel, not copied)`);
    if (a.lost) row("body bytes lost", `${a.lost} (the ring buffer was full)`);
    if (a.marks.length) {
      const m = h("div", { className: "marks" }, detail);
      for (const t of a.marks) h("div", { textContent: t }, m);
    }
    h("h3", { textContent: "Headers" }, detail);
    h("pre", { className: "headers", textContent: a.headers.map(([k, v]) => `${k}: ${v}`).join("\n") || "(none)" }, detail);
    h("h3", { textContent: "Body" }, detail);
    h("pre", { className: "body", textContent: a.body }, detail);
  }

  function closeDetail() {
    detail.className = "";
    selected = -1;
    drawn = null;
    render();
    scroll.focus();
  }

  function choose(i, reveal) {
    selected = i;
    showDetail(i);
    if (reveal && rowOf.has(i)) {
      const r = rows[rowOf.get(i)];
      const top = scroll.scrollTop, view = scroll.clientHeight;
      if (r.y < top || r.y + r.h + HEAD > top + view) scroll.scrollTop = Math.max(0, r.y - view / 3);
    }
    drawn = null;
    render();
  }

  scroll.addEventListener("click", (ev) => {
    const g = ev.target.closest && ev.target.closest("g.msg");
    if (g) choose(Number(g.dataset.i), false);
  });

  function step(d) {
    if (!shown.length) return;
    let k = shown.indexOf(selected);
    if (k < 0) k = d > 0 ? -1 : shown.length;
    k = Math.max(0, Math.min(shown.length - 1, k + d));
    choose(shown[k], true);
  }

  document.addEventListener("keydown", (ev) => {
    const inField = ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement;
    if (ev.key === "Escape") {
      if (inField) { ev.target.blur(); scroll.focus(); } else if (selected >= 0) closeDetail();
      return;
    }
    if (inField || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const keys = {
      j: () => step(1), ArrowDown: () => step(1), k: () => step(-1), ArrowUp: () => step(-1),
      Home: () => step(-A.length), End: () => step(A.length),
      p: () => { if (selected >= 0 && A[selected].pair !== undefined) choose(A[selected].pair, true); },
      "/": () => q.focus(),
    };
    if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
  });

  let timer = null;
  q.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refilter, 150); });
  for (const s of [who, method, status]) s.addEventListener("change", refilter);

  refilter();
  scroll.focus();
  // For tests and the curious: the layout, and a timed redraw of the current view.
  window.__report = {
    model: M, rows: () => rows, shown: () => shown, renders: () => renders, choose,
    redraw: () => { const t0 = performance.now(); drawn = null; render(); return performance.now() - t0; },
  };
  document.documentElement.dataset.ready = "1";
})();
