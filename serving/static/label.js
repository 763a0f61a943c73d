// The labeling page: one post at a time, keyboard first. Every answer is confirmed by the
// server (committed to the store) before the next post is shown; a failed send is retried
// with the same idempotency key, so a retry never counts twice. The next post is preloaded.
"use strict";

(() => {
  const app = document.getElementById("app");
  const csrf = app.dataset.csrf;
  const schema = JSON.parse(document.getElementById("schema").textContent);
  const taskNames = Object.keys(schema);
  const $ = (id) => document.getElementById(id);
  const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"];

  const state = {
    queue: [], // leased items from /next, the first one shown
    chosen: {}, // task -> label for the shown item
    active: 0, // index of the active task
    key: null, // idempotency key of the shown item's answer
    shownAt: 0,
    busy: false,
    filter: "",
    filtering: false,
    done: 0,
    refills: 0,
    answered: new Set(), // ids answered on this page (until undone)
  };

  const newKey = () =>
    window.crypto && crypto.randomUUID
      ? crypto.randomUUID()
      : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;

  function status(text, kind = "") {
    const el = $("status");
    el.textContent = text;
    el.className = `status ${kind}`;
  }

  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    const r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
    if (r.status === 401) {
      window.location.assign(`/login?next=${encodeURIComponent("/label")}`);
      throw new Error("signed out");
    }
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      data = null;
    }
    return { ok: r.ok, status: r.status, data };
  }

  // Retries network failures and 5xx with the same request (same idempotency key), backing off;
  // gives up after a few minutes and says so, keeping the answer on screen.
  async function send(method, path, body) {
    let wait = 300;
    for (let attempt = 0; attempt < 12; attempt += 1) {
      try {
        const res = await call(method, path, body);
        if (res.status < 500) return res;
        status(`server busy (${res.status}); retrying…`, "warn");
      } catch (e) {
        if (e.message === "signed out") throw e;
        status("connection lost; retrying…", "warn");
      }
      await new Promise((ok) => setTimeout(ok, wait));
      wait = Math.min(wait * 2, 15000);
    }
    throw new Error("the server did not answer; your answer is still here: press Enter to retry");
  }

  // The server's list of the evaluator's leased items, minus any answered since the request
  // left (a refill racing an answer must not bring the answered post back).
  async function refill() {
    const seq = ++state.refills;
    const res = await send("GET", "/v1/labeling/next?n=2");
    if (!res.ok) throw new Error(res.data ? res.data.message : `error ${res.status}`);
    if (seq !== state.refills) return; // a newer refill is on its way
    const shownId = state.queue.length ? state.queue[0].id : null;
    state.queue = res.data.items.filter((it) => !state.answered.has(it.id));
    $("remaining").textContent = res.data.remaining;
    if (!state.queue.length || state.queue[0].id !== shownId) show();
  }

  function show() {
    const item = state.queue[0];
    $("item").hidden = !item;
    $("empty").hidden = !!item;
    if (!item) return;
    state.key = newKey();
    state.shownAt = performance.now();
    state.active = 0;
    state.filter = "";
    state.filtering = false;
    state.chosen = {};
    for (const t of taskNames) {
      const s = item.suggestion && item.suggestion[t];
      state.chosen[t] = s ? s.label : schema[t][0];
    }
    $("text").textContent = item.text;
    $("channel").textContent = item.channel || "post";
    const a = item.author || {};
    $("author").textContent = a.handle
      ? `${a.handle}${a.verified ? " ✓" : ""} · ${Number(a.followers || 0).toLocaleString()} followers`
      : "";
    $("source").textContent = `from ${item.source}`;
    $("agreement").hidden = item.needed < 2;
    const c = item.context && item.context.customer;
    $("context").textContent = c
      ? [
          c.id && `customer ${c.id}`,
          c.tier && `tier ${c.tier}`,
          c.lifetime_value && `value ${c.lifetime_value}`,
          c.open_tickets && `${c.open_tickets} open tickets`,
          c.recent_contacts && c.recent_contacts.length && `${c.recent_contacts.length} recent contacts`,
        ]
          .filter(Boolean)
          .join(" · ")
      : "";
    closeFlag();
    renderTasks();
  }

  function renderTasks() {
    const item = state.queue[0];
    const box = $("tasks");
    box.replaceChildren();
    taskNames.forEach((task, ti) => {
      const row = document.createElement("fieldset");
      row.className = `task${ti === state.active ? " active" : ""}`;
      const legend = document.createElement("legend");
      const s = item.suggestion && item.suggestion[task];
      const name = document.createElement("span");
      name.className = "task-name";
      name.textContent = task.replaceAll("_", " ");
      legend.appendChild(name);
      if (s) {
        const hint = document.createElement("span");
        hint.className = "muted";
        hint.textContent = ` · model: ${s.label.replaceAll("_", " ")} (${Math.round(s.confidence * 100)}%)`;
        legend.appendChild(hint);
      }
      row.appendChild(legend);
      const labels = schema[task];
      const filtering = ti === state.active && state.filtering;
      const filter = filtering ? state.filter.toLowerCase() : "";
      if (filtering) {
        const f = document.createElement("div");
        f.className = "filter";
        f.textContent = `filter: ${state.filter}▏`;
        row.appendChild(f);
      }
      labels.forEach((label, li) => {
        if (filter && !label.toLowerCase().includes(filter)) return;
        const b = document.createElement("button");
        b.type = "button";
        b.className = "choice";
        if (s && s.label === label) b.classList.add("suggested");
        b.setAttribute("aria-pressed", String(state.chosen[task] === label));
        const key = ti === state.active && li < KEYS.length ? `${KEYS[li]} ` : "";
        b.textContent = `${key}${label.replaceAll("_", " ")}`;
        b.addEventListener("click", () => {
          state.active = ti;
          pick(task, label);
        });
        row.appendChild(b);
      });
      box.appendChild(row);
    });
  }

  function pick(task, label) {
    state.chosen[task] = label;
    renderTasks();
  }

  function moveTask(step) {
    state.active = (state.active + step + taskNames.length) % taskNames.length;
    renderTasks();
  }

  function cycleLabel(step) {
    const task = taskNames[state.active];
    const labels = schema[task];
    const i = labels.indexOf(state.chosen[task]);
    pick(task, labels[(i + step + labels.length) % labels.length]);
  }

  async function answer(kind, extra = {}) {
    const item = state.queue[0];
    if (!item || state.busy) return;
    state.busy = true;
    status("saving…");
    const body = {
      kind,
      idempotency_key: state.key,
      duration_ms: Math.round(performance.now() - state.shownAt),
      ...extra,
    };
    if (kind === "label") body.labels = { ...state.chosen };
    try {
      const res = await send("POST", `/v1/labeling/items/${item.id}/answer`, body);
      if (res.ok) {
        if (kind === "label" && !res.data.replay) state.done += 1;
        $("done-count").textContent = state.done;
        status(kind === "label" ? "saved" : kind === "skip" ? "skipped" : "flagged", "ok");
      } else {
        status(res.data ? res.data.message : `error ${res.status}`, "error");
      }
      if (res.ok || res.status === 409 || res.status === 404) {
        state.answered.add(item.id);
        state.queue.shift(); // confirmed (or no longer ours): the preloaded post comes next
        show();
        state.busy = false;
        await refill();
      }
    } catch (e) {
      status(e.message, "error");
    } finally {
      state.busy = false;
    }
  }

  async function undo() {
    if (state.busy) return;
    state.busy = true;
    try {
      const res = await send("POST", "/v1/labeling/undo");
      if (res.ok) {
        if (res.data.kind === "label" && state.done > 0) state.done -= 1;
        $("done-count").textContent = state.done;
        status("undone: the post is back", "ok");
        state.answered.delete(res.data.item_id);
        state.queue = [];
        state.busy = false;
        await refill();
      } else {
        status(res.data ? res.data.message : `error ${res.status}`, "error");
      }
    } catch (e) {
      status(e.message, "error");
    } finally {
      state.busy = false;
    }
  }

  function openFlag() {
    $("flag-box").hidden = false;
    $("flag-note").value = "";
    $("flag-note").focus();
  }

  function closeFlag() {
    $("flag-box").hidden = true;
    if (document.activeElement === $("flag-note")) $("flag-note").blur();
  }

  function toggleHelp(force) {
    const help = $("help");
    help.hidden = force === undefined ? !help.hidden : !force;
  }

  document.addEventListener("keydown", (e) => {
    if (e.target === $("flag-note")) {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        const note = $("flag-note").value.trim();
        closeFlag();
        answer("flag", note ? { note } : {});
      } else if (e.key === "Escape") {
        closeFlag();
      }
      return;
    }
    if (e.altKey || e.metaKey) return;
    if (e.ctrlKey) {
      if (e.key === "z") {
        e.preventDefault();
        undo();
      }
      return;
    }
    if (!$("help").hidden && (e.key === "Escape" || e.key === "?")) {
      e.preventDefault();
      toggleHelp(false);
      return;
    }
    const item = state.queue[0];
    if (state.filtering) {
      e.preventDefault();
      if (e.key === "Escape") state.filtering = false;
      else if (e.key === "Backspace") state.filter = state.filter.slice(0, -1);
      else if (e.key === "Enter") {
        const task = taskNames[state.active];
        const f = state.filter.toLowerCase();
        const hit = schema[task].find((l) => l.toLowerCase().includes(f));
        state.filtering = false;
        if (hit) pick(task, hit);
      } else if (e.key.length === 1) state.filter += e.key;
      if (!state.filtering) state.filter = "";
      renderTasks();
      return;
    }
    if (e.key === "/" && item) {
      e.preventDefault();
      state.filtering = true;
      state.filter = "";
      renderTasks();
      return;
    }
    const keyIndex = KEYS.indexOf(e.key);
    if (item && keyIndex >= 0) {
      const labels = schema[taskNames[state.active]];
      if (keyIndex < labels.length) pick(taskNames[state.active], labels[keyIndex]);
      e.preventDefault();
      return;
    }
    const handlers = {
      Enter: () => item && answer("label"),
      s: () => item && answer("skip"),
      f: () => item && openFlag(),
      u: () => undo(),
      "?": () => toggleHelp(),
      Tab: () => item && moveTask(e.shiftKey ? -1 : 1),
      ArrowDown: () => item && moveTask(1),
      ArrowUp: () => item && moveTask(-1),
      ArrowRight: () => item && cycleLabel(1),
      ArrowLeft: () => item && cycleLabel(-1),
      Escape: () => toggleHelp(false),
    };
    const handler = handlers[e.key];
    if (handler) {
      e.preventDefault();
      handler();
    }
  });

  $("btn-submit").addEventListener("click", () => answer("label"));
  $("btn-skip").addEventListener("click", () => answer("skip"));
  $("btn-flag").addEventListener("click", openFlag);
  $("btn-undo").addEventListener("click", undo);
  $("btn-undo-empty").addEventListener("click", undo);
  $("btn-help").addEventListener("click", () => toggleHelp());

  setInterval(() => {
    if (!state.queue.length && !state.busy) refill().catch((e) => status(e.message, "error"));
  }, 15000);
  refill().catch((e) => status(e.message, "error"));
})();
