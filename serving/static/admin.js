// The leads' and admins' pages: stats (agreement, counts, uploads), review, accounts.
// Plain DOM building (textContent only, never innerHTML with data), talking to the JSON API.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const page = document.querySelector("[data-csrf]");
  if (!page) return;
  const csrf = page.dataset.csrf;
  const human = (s) => String(s).replaceAll("_", " ");

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c !== undefined && c !== null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const newKey = () =>
    window.crypto && crypto.randomUUID
      ? crypto.randomUUID()
      : `k-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;

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
  const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`);
  const isNum = (c) => typeof c === "number" || /^(–|-?\d+(\.\d+)?%?)$/.test(String(c));

  function table(heads, list, empty = "nothing yet") {
    const body = list.length
      ? list.map((cells) => el("tr", {}, cells.map((c) => el("td", { class: isNum(c) ? "num" : null }, c))))
      : [el("tr", {}, el("td", { colspan: String(heads.length), class: "muted" }, empty))];
    return el(
      "table",
      { class: "data" },
      el("thead", {}, el("tr", {}, heads.map((h, i) => el("th", { class: i && isNum(list[0] ? list[0][i] : "") ? "num" : null }, h)))),
      el("tbody", {}, body),
    );
  }

  // -- stats ------------------------------------------------------------------------------

  function barChart(counts) {
    const names = Object.keys(counts).sort((a, b) => counts[b] - counts[a]);
    const max = Math.max(1, ...Object.values(counts));
    // The page's own <svg> (made by the HTML parser) gives the namespace: no URL in this file.
    const svg = $("per-evaluator-svg");
    const ns = svg.namespaceURI;
    svg.replaceChildren();
    const row = 28;
    const h = Math.max(1, names.length) * row + 4;
    svg.setAttribute("viewBox", `0 0 640 ${h}`);
    svg.setAttribute("width", "640");
    svg.setAttribute("height", String(h));
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `labels per evaluator: ${names.map((n) => `${n} ${counts[n]}`).join(", ") || "none yet"}`);
    const add = (tag, attrs, text) => {
      const node = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      if (text !== undefined) node.textContent = text;
      svg.appendChild(node);
    };
    if (!names.length) add("text", { x: 0, y: 18, class: "name" }, "no labels yet");
    names.forEach((name, i) => {
      const y = 2 + i * row;
      const w = Math.max(2, Math.round((460 * counts[name]) / max));
      add("text", { x: 0, y: y + 17, class: "name" }, name.length > 18 ? `${name.slice(0, 17)}…` : name);
      add("rect", { x: 140, y: y + 3, width: w, height: 18, rx: 3, class: "bar" });
      add("text", { x: 148 + w, y: y + 17, class: "value" }, counts[name]);
    });
    return svg;
  }

  async function stats() {
    const s = await api("GET", "/v1/labeling/stats");
    const pool = s.pool || {};
    const cards = [
      [pool.total, "posts in the pool"],
      [pool.open, "open"],
      [pool.done, "done"],
      [pool.review, "waiting for review"],
      [pool.resolved, "resolved"],
      [s.records, "labels given"],
    ];
    $("pool").replaceChildren(...cards.map(([n, what]) => el("div", { class: "card" }, el("b", {}, n ?? 0), what)));

    const perEvaluator = {};
    for (const [who, tasks] of Object.entries(s.label_counts || {})) {
      const first = Object.values(tasks)[0] || {};
      perEvaluator[who] = Object.values(first).reduce((a, b) => a + b, 0);
    }
    barChart(perEvaluator);
    const hourly = s.labels_per_hour || {};
    $("per-evaluator").tBodies[0].replaceChildren(
      ...Object.entries(perEvaluator).map(([who, n]) =>
        el("tr", {}, el("td", {}, who), el("td", { class: "num" }, n), el("td", { class: "num" }, fmt(hourly[who], 1))),
      ),
    );

    const tasks = Object.entries(s.tasks || {});
    const agreement = $("agreement");
    agreement.replaceChildren(
      table(
        ["task", "items labeled", "items with 2+ evaluators", "Krippendorff's alpha"],
        tasks.map(([task, t]) => [human(task), t.items ?? 0, t.items_multi ?? 0, fmt(t.krippendorff_alpha)]),
      ),
    );
    for (const [task, t] of tasks) {
      agreement.append(
        el("h3", {}, `${human(task)}: Cohen's kappa per pair`),
        table(
          ["evaluator", "evaluator", "items in common", "Cohen's kappa"],
          (t.pairwise_kappa || []).map((p) => [p.a, p.b, p.items, fmt(p.kappa)]),
          "no item labeled by two evaluators yet",
        ),
      );
    }
    $("changes").tBodies[0].replaceChildren(
      ...tasks.map(([task, t]) => {
        const sug = t.suggestion || {};
        return el("tr", {}, el("td", {}, human(task)), el("td", { class: "num" }, sug.shown ?? 0), el("td", { class: "num" }, sug.changed ?? 0), el("td", { class: "num" }, pct(sug.rate)));
      }),
    );

    // Per task: evaluators down, labels across.
    const counts = $("counts");
    counts.replaceChildren();
    const who = Object.keys(s.label_counts || {});
    for (const [task] of tasks) {
      const labels = [...new Set(who.flatMap((w) => Object.keys((s.label_counts[w] || {})[task] || {})))];
      counts.append(
        el("h3", {}, human(task)),
        table(
          ["evaluator", ...labels.map(human)],
          who.map((w) => [w, ...labels.map((l) => ((s.label_counts[w] || {})[task] || {})[l] || 0)]),
        ),
      );
    }
  }

  function upload() {
    $("upload").addEventListener("submit", async (e) => {
      e.preventDefault();
      const out = $("upload-result");
      const button = e.target.querySelector("button");
      out.className = "";
      out.textContent = "uploading and scoring…";
      button.disabled = true;
      try {
        const r = await api("POST", "/v1/labeling/items", new FormData(e.target), true);
        const refused = r.errors.filter((x) => !x.warning).length;
        out.className = refused ? "error" : "ok";
        out.replaceChildren(
          el("p", {}, `${r.added} added, ${r.duplicates} already in the pool, ${refused} row${refused === 1 ? "" : "s"} refused.`),
          r.errors.length
            ? el("ul", { class: "errors" }, r.errors.slice(0, 100).map((x) => el("li", {}, `line ${x.line}: ${x.warning ? "(note) " : ""}${x.message}`)))
            : null,
        );
        e.target.reset();
        stats().catch(report);
      } catch (err) {
        out.className = "error";
        out.textContent = err.message;
      } finally {
        button.disabled = false;
      }
    });
  }

  // -- review -----------------------------------------------------------------------------

  function majority(answers, task, fallback) {
    const votes = new Map();
    for (const a of answers) {
      const l = a.labels && a.labels[task];
      if (l) votes.set(l, (votes.get(l) || 0) + 1);
    }
    let best = fallback;
    let n = 0;
    for (const [l, v] of votes) if (v > n) [best, n] = [l, v]; // ties: the first answer's
    return best;
  }

  function reviewItem(item, pairs) {
    const key = newKey(); // one per post shown: a retried resolve counts once
    const labelled = item.answers.filter((a) => a.labels);
    const selects = {};
    const fields = pairs.map(([task, labels]) => {
      const fallback = item.suggestion && item.suggestion[task] ? item.suggestion[task].label : labels[0];
      const select = el("select", { name: task }, labels.map((l) => el("option", { value: l }, human(l))));
      select.value = majority(labelled, task, fallback);
      selects[task] = select;
      return el("label", {}, human(task), select);
    });
    const status = el("span", { role: "status" });
    const box = el("section", { class: "review-item", tabindex: "0", "aria-label": `post ${item.id}` });
    const button = el("button", { type: "submit", class: "primary" }, "Resolve ", el("kbd", {}, "r"));
    box.resolve = async () => {
      if (box.classList.contains("resolved") || button.disabled) return;
      button.disabled = true;
      status.className = "muted";
      status.textContent = "saving…";
      try {
        const labels = Object.fromEntries(Object.entries(selects).map(([t, s]) => [t, s.value]));
        await api("POST", `/v1/labeling/items/${item.id}/resolve`, { labels, idempotency_key: key });
        box.classList.add("resolved");
        status.className = "ok";
        status.textContent = "resolved";
        Object.values(selects).forEach((s) => (s.disabled = true));
        move(box, 1);
      } catch (err) {
        status.className = "error";
        status.textContent = err.message;
        button.disabled = false;
      }
    };
    const disagree = (task) => new Set(labelled.map((a) => a.labels[task])).size > 1;
    const answers = table(
      ["evaluator", ...pairs.map(([task]) => human(task) + (disagree(task) ? " ≠" : ""))],
      item.answers.map((a) =>
        a.kind === "flag"
          ? [a.evaluator, ...pairs.map((_, i) => (i === 0 ? `flagged: ${a.note || "(no note)"}` : ""))]
          : [a.evaluator, ...pairs.map(([task]) => human((a.labels || {})[task] || "–"))],
      ),
    );
    box.append(
      el("p", { class: "muted" }, `${item.channel || "post"} · from ${human(item.source)} · ${item.state}`),
      el("p", { class: "post-text" }, item.text),
      answers,
      el("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); box.resolve(); } }, fields, button, status),
    );
    return box;
  }

  function move(from, step) {
    const boxes = [...document.querySelectorAll(".review-item:not(.resolved)")];
    const all = [...document.querySelectorAll(".review-item")];
    const at = all.indexOf(from);
    const next = step > 0 ? boxes.find((b) => all.indexOf(b) > at) : boxes.reverse().find((b) => all.indexOf(b) < at);
    if (next) next.focus();
  }

  async function review() {
    const pairs = JSON.parse($("schema").textContent);
    const list = $("review-list");
    const items = await api("GET", "/v1/labeling/review?limit=100");
    $("review-count").textContent = `${items.length} post${items.length === 1 ? "" : "s"} waiting`;
    if (!items.length) {
      list.replaceChildren(el("section", { class: "empty" }, el("h2", {}, "Nothing waiting for review")));
      return;
    }
    list.replaceChildren(...items.map((item) => reviewItem(item, pairs)));
    list.querySelector(".review-item").focus();
    document.addEventListener("keydown", (e) => {
      if (e.altKey || e.ctrlKey || e.metaKey || ["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName)) return;
      const box = e.target.closest ? e.target.closest(".review-item") : null;
      if (e.key === "j" || e.key === "k") {
        e.preventDefault();
        if (box) move(box, e.key === "j" ? 1 : -1);
        else list.querySelector(".review-item").focus();
      } else if (e.key === "r" && box) {
        e.preventDefault();
        box.resolve();
      }
    });
  }

  // -- accounts ---------------------------------------------------------------------------

  async function users() {
    const me = page.dataset.me;
    const list = await api("GET", "/v1/users");
    const result = $("users-result");
    const patch = async (name, body, done) => {
      try {
        await api("PATCH", `/v1/users/${encodeURIComponent(name)}`, body);
        result.className = "ok";
        result.textContent = `${name}: ${done}`;
      } catch (err) {
        result.className = "error";
        result.textContent = `${name}: ${err.message}`;
      }
      users().catch(report);
    };
    $("users").tBodies[0].replaceChildren(
      ...list.map((u) => {
        const role = el("select", { "aria-label": `role of ${u.name}` }, ["evaluator", "lead", "admin"].map((r) => el("option", {}, r)));
        role.value = u.role;
        role.disabled = u.name === me; // an admin cannot demote themself out of this page
        role.addEventListener("change", () => patch(u.name, { role: role.value }, `now ${role.value}`));
        const toggle = el(
          "button",
          { type: "button", onclick: () => patch(u.name, { disabled: !u.disabled }, u.disabled ? "enabled" : "disabled") },
          u.disabled ? "Enable" : "Disable",
        );
        toggle.disabled = u.name === me;
        return el("tr", {}, el("td", {}, u.name, u.name === me ? el("span", { class: "muted" }, " (you)") : null), el("td", {}, role), el("td", { class: u.disabled ? "error" : "ok" }, u.disabled ? "disabled" : "active"), el("td", {}, toggle));
      }),
    );
  }

  function addUser() {
    $("add-user").addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = new FormData(e.target);
      const result = $("users-result");
      try {
        await api("POST", "/v1/users", { name: f.get("name"), role: f.get("role"), password: f.get("password") });
        result.className = "ok";
        result.textContent = `added ${f.get("name")} (${f.get("role")})`;
        e.target.reset();
        users().catch(report);
      } catch (err) {
        result.className = "error";
        result.textContent = err.message;
      }
    });
  }

  function report(err) {
    page.prepend(el("p", { class: "message", role: "alert" }, err.message));
  }
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
