// The managers' reports page: a range picker, key figures and inline SVG charts, all from
// GET /v1/reports (the signed-in session's cookie). Plain DOM building (textContent only,
// never innerHTML with data); the charts are drawn like the stats page's (admin.js).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const page = $("reports-page");
  if (!page) return;
  const human = (s) => String(s).replaceAll("_", " ");
  const DAY = 86_400_000;

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c !== undefined && c !== null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  // Formats (the browser test repeats them): minutes and rates to one decimal, CSAT to two.
  const none = (x) => x === null || x === undefined;
  const minutes = (x) => (none(x) ? "–" : `${x.toFixed(1)} min`);
  const pct = (x) => (none(x) ? "–" : `${(x * 100).toFixed(1)}%`);
  const csat = (x) => (none(x) ? "–" : x.toFixed(2));
  const nps = (x) => (none(x) ? "–" : `${x > 0 ? "+" : ""}${x.toFixed(0)}`);

  // -- the range --------------------------------------------------------------------------

  const day = (iso) => iso.slice(0, 10);
  const isoDay = (d) => new Date(d).toISOString().slice(0, 10);

  function rangeFromUrl() {
    const q = new URLSearchParams(location.search);
    const r = {};
    for (const k of ["from", "to"]) if (q.get(k)) r[k] = q.get(k);
    return r;
  }

  async function load(range) {
    const q = new URLSearchParams(range).toString();
    const r = await fetch(`/v1/reports${q ? `?${q}` : ""}`, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
    if (r.status === 401) {
      window.location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
      return;
    }
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      data = null;
    }
    const error = $("report-error");
    if (!r.ok) {
      error.textContent = data && data.message ? data.message : `error ${r.status}`;
      error.hidden = false;
      return;
    }
    error.hidden = true;
    history.replaceState(null, "", q ? `?${q}` : location.pathname);
    show(data);
  }

  function picker() {
    const form = $("range");
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const from = $("range-from").value;
      const to = $("range-to").value;
      if (!from || !to) return;
      // The end day is included: the range runs to the next midnight (UTC).
      load({ from: `${from}T00:00:00Z`, to: `${isoDay(Date.parse(`${to}T00:00:00Z`) + DAY)}T00:00:00Z` }).catch(report);
    });
    for (const b of form.querySelectorAll("button[data-days]")) {
      b.addEventListener("click", () => {
        const now = Date.now();
        load({ from: new Date(now - Number(b.dataset.days) * DAY).toISOString(), to: new Date(now).toISOString() }).catch(report);
      });
    }
  }

  // -- charts -----------------------------------------------------------------------------

  function canvas(id, width, height, label) {
    // The page's own <svg> (made by the HTML parser) gives the namespace: no URL in this file.
    const svg = $(id).querySelector("svg");
    const ns = svg.namespaceURI;
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", String(width));
    svg.setAttribute("height", String(height));
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    return (tag, attrs, text, parent = svg) => {
      const node = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      if (text !== undefined) node.textContent = text;
      parent.appendChild(node);
      return node;
    };
  }

  // Horizontal bars, one per group with a CSAT answer, on a fixed 0-5 scale.
  function csatChart(id, groups, what) {
    const rated = groups.filter((g) => !none(g.csat));
    const unrated = groups.length - rated.length;
    const row = 28;
    const h = Math.max(1, rated.length) * row + (unrated ? row : 0) + 22;
    const label = rated.map((g) => `${g.key} ${csat(g.csat)}`).join(", ") || "no CSAT answers";
    const add = canvas(id, 640, h, `mean CSAT by ${what}: ${label}`);
    const x0 = 150;
    const span = 400;
    for (const tick of [1, 2, 3, 4, 5]) {
      const x = x0 + (span * tick) / 5;
      add("line", { x1: x, y1: 0, x2: x, y2: h - 18, class: "grid" });
      add("text", { x, y: h - 4, class: "tick", "text-anchor": "middle" }, tick);
    }
    if (!rated.length) add("text", { x: 0, y: 18, class: "name" }, "no CSAT answers in this range");
    rated.forEach((g, i) => {
      const y = 2 + i * row;
      const w = Math.max(2, Math.round((span * g.csat) / 5));
      const name = human(g.key);
      add("text", { x: 0, y: y + 17, class: "name" }, name.length > 20 ? `${name.slice(0, 19)}…` : name);
      const bar = add("rect", { x: x0, y: y + 3, width: w, height: 18, rx: 3, class: "bar", "data-key": g.key, "data-value": g.csat });
      add("title", {}, `${name}: CSAT ${csat(g.csat)} from ${g.rated} answer(s)`, bar);
      add("text", { x: x0 + w + 6, y: y + 17, class: "value" }, `${csat(g.csat)} (${g.rated})`);
    });
    if (unrated) {
      add("text", { x: 0, y: 2 + rated.length * row + 17, class: "name" }, `${unrated} more without CSAT answers`);
    }
  }

  // Vertical bars: one per item, even when zero (a histogram keeps its bins).
  function columns(id, items, label, cls) {
    const width = 440;
    const h = 200;
    const top = 22;
    const base = h - 36;
    const max = Math.max(1, ...items.map((it) => it.value));
    const add = canvas(id, width, h, label);
    const slot = (width - 10) / items.length;
    add("line", { x1: 0, y1: base + 0.5, x2: width, y2: base + 0.5, class: "axis" });
    items.forEach((it, i) => {
      const bh = Math.round(((base - top) * it.value) / max);
      const x = 5 + i * slot + slot * 0.15;
      const w = slot * 0.7;
      const bar = add("rect", { x, y: base - bh, width: w, height: bh, rx: 2, class: cls, "data-key": it.key, "data-count": it.value });
      add("title", {}, it.title, bar);
      add("text", { x: x + w / 2, y: base - bh - 5, class: "value", "text-anchor": "middle" }, it.top);
      add("text", { x: x + w / 2, y: base + 16, class: "name", "text-anchor": "middle" }, it.key);
      if (it.under) add("text", { x: x + w / 2, y: base + 31, class: "tick", "text-anchor": "middle" }, it.under);
    });
  }

  // -- the page ---------------------------------------------------------------------------

  function tiles(r) {
    const fr = r.first_response;
    const sla = r.sla;
    const sat = r.satisfaction.overall;
    const list = [
      ["cases", r.cases, String(r.cases), "cases"],
      ["open", r.open, String(r.open), "still open"],
      ["p50", fr.p50, minutes(fr.p50), "first response, median"],
      ["p90", fr.p90, minutes(fr.p90), "first response, 90th percentile"],
      ["breach_rate", sla.rate, pct(sla.rate), `SLA breached (${sla.breached} of ${sla.met + sla.breached})`],
      ["overdue", sla.overdue, String(sla.overdue), "open past the deadline"],
      ["csat", sat.csat, csat(sat.csat), `mean CSAT (${sat.rated} answers)`],
      ["satisfied", sat.satisfied, pct(sat.satisfied), "satisfied (CSAT 4-5)"],
      ["nps", sat.nps, nps(sat.nps), `NPS (${sat.nps_responses} answers)`],
    ];
    $("kpis").replaceChildren(
      ...list.map(([key, value, text, what]) =>
        el("div", { class: "card", "data-kpi": key }, el("b", { "data-value": none(value) ? "" : String(value) }, text), what),
      ),
    );
  }

  function groupTable(id, groups, head) {
    const rows = groups.length
      ? groups.map((g) =>
          el(
            "tr",
            {},
            el("td", {}, human(g.key)),
            ...[g.cases, g.rated, csat(g.csat), pct(g.satisfied), g.nps_responses, nps(g.nps), pct(g.resolved_rate)].map((c) => el("td", { class: "num" }, c)),
          ),
        )
      : [el("tr", {}, el("td", { colspan: "8", class: "muted" }, "no cases in this range"))];
    $(id).replaceChildren(
      el(
        "table",
        { class: "data" },
        el("thead", {}, el("tr", {}, el("th", {}, head), ...["cases", "CSAT answers", "mean CSAT", "satisfied", "NPS answers", "NPS", "resolved"].map((h) => el("th", { class: "num" }, h)))),
        el("tbody", {}, rows),
      ),
    );
  }

  function show(r) {
    $("range-from").value = day(r.from);
    $("range-to").value = isoDay(Date.parse(r.to) - 1);
    $("range-shown").textContent = `${r.cases} case${r.cases === 1 ? "" : "s"} from ${r.from.slice(0, 16).replace("T", " ")} to ${r.to.slice(0, 16).replace("T", " ")} UTC`;
    tiles(r);
    const fr = r.first_response;
    columns(
      "chart-response",
      fr.histogram.map((b) => ({ key: b.label, value: b.count, top: b.count, title: `${b.label}: ${b.count} case(s)` })),
      `first-response times of ${fr.responded} answered case(s): median ${minutes(fr.p50)}, 90th percentile ${minutes(fr.p90)}`,
      "bar",
    );
    columns(
      "chart-breaches",
      r.sla.by_level.map((l) => ({
        key: l.level,
        value: l.breached,
        top: l.breached,
        under: pct(l.rate),
        title: `${l.level}: ${l.breached} breached of ${l.met + l.breached} (${pct(l.rate)})`,
      })),
      `SLA breaches by level: ${r.sla.by_level.map((l) => `${l.level} ${l.breached}`).join(", ")}`,
      "bar breach",
    );
    $("levels").tBodies[0].replaceChildren(
      ...r.sla.by_level.map((l) => {
        const t = fr.by_level.find((x) => x.level === l.level) || {};
        return el(
          "tr",
          { "data-level": l.level },
          el("td", {}, l.level),
          ...[t.responded ?? 0, none(t.p50) ? "–" : t.p50.toFixed(1), none(t.p90) ? "–" : t.p90.toFixed(1), l.met, l.breached, l.overdue, l.pending, pct(l.rate)].map((c) =>
            el("td", { class: "num" }, c),
          ),
        );
      }),
    );
    const s = r.satisfaction;
    csatChart("chart-topic", s.by_topic, "topic");
    csatChart("chart-agent", s.by_agent, "agent");
    csatChart("chart-channel", s.by_channel, "channel");
    groupTable("table-topic", s.by_topic, "topic");
    groupTable("table-agent", s.by_agent, "agent");
    groupTable("table-channel", s.by_channel, "channel");
  }

  function report(err) {
    const error = $("report-error");
    error.textContent = err.message;
    error.hidden = false;
  }

  picker();
  load(rangeFromUrl()).catch(report);
})();
