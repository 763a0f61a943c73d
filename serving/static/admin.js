// The leads' and admins' pages: stats (agreement, counts, uploads), review, accounts.
// Plain DOM building (textContent only, never innerHTML with data), talking to the JSON API.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const page = document.querySelector("[data-csrf]");
  if (!page) return;
  const csrf = page.dataset.csrf;

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  async function api(method, path, body, isForm = false) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (body !== undefined && !isForm) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : isForm ? body : JSON.stringify(body),
      credentials: "same-origin",
    });
    if (r.status === 401) window.location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      data = null;
    }
    if (!r.ok) throw new Error(data && data.message ? data.message : `error ${r.status}`);
    return data;
  }

  const fmt = (x, digits = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

  function rows(tbody, list) {
    tbody.replaceChildren(...list.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
  }

  // -- stats ------------------------------------------------------------------------------

  function barChart(counts) {
    const names = Object.keys(counts);
    const max = Math.max(1, ...Object.values(counts));
    const ns = "http://www.w3.org/2000/svg";
    const h = 24 * names.length + 10;
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 600 ${h}`);
    svg.setAttribute("width", "600");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "labels per evaluator");
    names.forEach((name, i) => {
      const y = 5 + i * 24;
      const w = Math.round((440 * counts[name]) / max);
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", "0");
      label.setAttribute("y", String(y + 15));
      label.textContent = name;
      const bar = document.createElementNS(ns, "rect");
      bar.setAttribute("x", "120");
      bar.setAttribute("y", String(y));
      bar.setAttribute("width", String(w));
      bar.setAttribute("height", "18");
      bar.setAttribute("fill", "#2f5bea");
      const value = document.createElementNS(ns, "text");
      value.setAttribute("x", String(126 + w));
      value.setAttribute("y", String(y + 15));
      value.textContent = String(counts[name]);
      svg.append(label, bar, value);
    });
    return svg;
  }

  async function stats() {
    const s = await api("GET", "/v1/labeling/stats");
    const pool = s.pool || {};
    $("pool").replaceChildren(
      ...["total", "open", "done", "review", "resolved"].map((k) =>
        el("div", { class: "card" }, el("b", {}, pool[k] ?? 0), `${k === "total" ? "posts in the pool" : k}`),
      ),
      el("div", { class: "card" }, el("b", {}, s.records ?? 0), "labels given"),
    );
    const perEvaluator = {};
    for (const [who, tasks] of Object.entries(s.label_counts || {})) {
      const first = Object.values(tasks)[0] || {};
      perEvaluator[who] = Object.values(first).reduce((a, b) => a + b, 0);
    }
    $("per-evaluator-chart").replaceChildren(barChart(perEvaluator));
    rows(
      $("per-evaluator").tBodies[0],
      Object.entries(perEvaluator).map(([who, n]) => [who, n, fmt((s.labels_per_hour || {})[who], 1)]),
    );
    const agreement = $("agreement");
    agreement.replaceChildren();
    const changes = [];
    for (const [task, t] of Object.entries(s.tasks || {})) {
      agreement.append(
        el("h3", {}, `${task}: Krippendorff's alpha ${fmt(t.krippendorff_alpha)} over ${t.items_multi ?? 0} items`),
      );
      const table = el("table", { class: "data" }, el("thead", {}, el("tr", {}, ...["evaluator", "evaluator", "items in common", "Cohen's kappa"].map((h) => el("th", {}, h)))), el("tbody"));
      rows(table.tBodies[0], (t.pairwise_kappa || []).map((p) => [p.a, p.b, p.items, fmt(p.kappa)]));
      agreement.append(table);
      const sug = t.suggestion || {};
      changes.push([task, sug.shown ?? 0, sug.changed ?? 0, sug.rate === null || sug.rate === undefined ? "–" : `${Math.round(sug.rate * 100)}%`]);
    }
    rows($("changes").tBodies[0], changes);
    const counts = $("counts");
    counts.replaceChildren();
    for (const [who, tasks] of Object.entries(s.label_counts || {})) {
      counts.append(el("h3", {}, who));
      const table = el("table", { class: "data" }, el("thead", {}, el("tr", {}, el("th", {}, "task"), el("th", {}, "label"), el("th", {}, "count"))), el("tbody"));
      const list = [];
      for (const [task, labels] of Object.entries(tasks)) {
        for (const [label, n] of Object.entries(labels)) list.push([task, label, n]);
      }
      rows(table.tBodies[0], list);
      counts.append(table);
    }
  }

  function upload() {
    $("upload").addEventListener("submit", async (e) => {
      e.preventDefault();
      const out = $("upload-result");
      out.textContent = "uploading and scoring…";
      try {
        const r = await api("POST", "/v1/labeling/items", new FormData(e.target), true);
        const lines = r.errors.map((x) => `line ${x.line}: ${x.message}`);
        out.replaceChildren(
          el("p", {}, `${r.added} added, ${r.duplicates} already in the pool, ${r.errors.length} rows refused.`),
          ...(lines.length ? [el("ul", {}, ...lines.slice(0, 50).map((l) => el("li", {}, l)))] : []),
        );
        stats();
      } catch (err) {
        out.textContent = err.message;
      }
    });
  }

  // -- review -----------------------------------------------------------------------------

  async function review() {
    const schema = JSON.parse($("schema").textContent);
    const list = $("review-list");
    const items = await api("GET", "/v1/labeling/review?limit=100");
    if (!items.length) {
      list.replaceChildren(el("p", { class: "empty" }, "Nothing waiting for review."));
      return;
    }
    list.replaceChildren(
      ...items.map((item) => {
        const first = (item.answers.find((a) => a.labels) || {}).labels || {};
        const selects = {};
        const fields = Object.entries(schema).map(([task, labels]) => {
          const fallback = item.suggestion && item.suggestion[task] ? item.suggestion[task].label : labels[0];
          const select = el("select", { name: task, "aria-label": task }, ...labels.map((l) => el("option", { value: l }, l)));
          select.value = first[task] || fallback;
          selects[task] = select;
          return el("label", {}, `${task} `, select);
        });
        const status = el("span", { role: "status" });
        const box = el("section", { class: "review-item", tabindex: "0" });
        const resolve = async () => {
          const labels = Object.fromEntries(Object.entries(selects).map(([t, s]) => [t, s.value]));
          try {
            await api("POST", `/v1/labeling/items/${item.id}/resolve`, {
              labels,
              idempotency_key: `resolve-${item.id}-${Date.now().toString(36)}`,
            });
            box.classList.add("resolved");
            status.textContent = "resolved";
          } catch (err) {
            status.textContent = err.message;
          }
        };
        box.resolve = resolve;
        box.append(
          el("p", { class: "post-text" }, item.text),
          el(
            "ul",
            {},
            ...item.answers.map((a) =>
              el("li", {}, `${a.evaluator}: `, a.kind === "flag" ? `flagged: ${a.note || "(no note)"}` : Object.entries(a.labels || {}).map(([t, l]) => `${t} ${l}`).join(", ")),
            ),
          ),
          el("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); resolve(); } }, ...fields, el("button", { type: "submit" }, "Resolve"), status),
        );
        return box;
      }),
    );
    document.addEventListener("keydown", (e) => {
      if (["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName)) return;
      const boxes = [...document.querySelectorAll(".review-item")];
      const at = boxes.indexOf(document.activeElement);
      if (e.key === "j" || e.key === "k") {
        const next = boxes[Math.min(boxes.length - 1, Math.max(0, at + (e.key === "j" ? 1 : -1)))];
        if (next) next.focus();
      } else if (e.key === "r" && at >= 0) {
        boxes[at].resolve();
      }
    });
  }

  // -- accounts ---------------------------------------------------------------------------

  async function users() {
    const me = page.dataset.me;
    const list = await api("GET", "/v1/users");
    const result = $("users-result");
    const patch = async (name, body) => {
      try {
        await api("PATCH", `/v1/users/${encodeURIComponent(name)}`, body);
        users();
      } catch (err) {
        result.textContent = err.message;
      }
    };
    $("users").tBodies[0].replaceChildren(
      ...list.map((u) => {
        const role = el("select", { "aria-label": `role of ${u.name}` }, ...["evaluator", "lead", "admin"].map((r) => el("option", {}, r)));
        role.value = u.role;
        role.addEventListener("change", () => patch(u.name, { role: role.value }));
        const toggle = el("button", { type: "button", onclick: () => patch(u.name, { disabled: !u.disabled }) }, u.disabled ? "Enable" : "Disable");
        if (u.name === me) toggle.disabled = true;
        return el("tr", {}, el("td", {}, u.name), el("td", {}, role), el("td", {}, u.disabled ? "disabled" : "active"), el("td", {}, toggle));
      }),
    );
  }

  function addUser() {
    $("add-user").addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = new FormData(e.target);
      try {
        await api("POST", "/v1/users", { name: f.get("name"), role: f.get("role"), password: f.get("password") });
        $("users-result").textContent = `added ${f.get("name")}`;
        e.target.reset();
        users();
      } catch (err) {
        $("users-result").textContent = err.message;
      }
    });
  }

  const report = (err) => {
    const box = el("p", { class: "message", role: "alert" }, err.message);
    page.prepend(box);
  };
  if ($("stats-page")) {
    upload();
    stats().catch(report);
  } else if ($("review-page")) {
    review().catch(report);
  } else if ($("users-page")) {
    addUser();
    users().catch(report);
  }
})();
