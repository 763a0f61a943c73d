// The labeling page: one post at a time, keyboard first. Every answer is confirmed by the
// server (committed to the store) before the next post is shown; a failed send is retried
// with the same idempotency key, so a retry never counts twice. The next post is preloaded.
"use strict";

(() => {
  const app = document.getElementById("app");
  const csrf = app.dataset.csrf;
  // [[task, [labels]], ...] in the served schema's order (a JSON object would be key-sorted)
  const pairs = JSON.parse(document.getElementById("schema").textContent);
  const schema = Object.fromEntries(pairs);
  const taskNames = pairs.map(([task]) => task);
  const $ = (id) => document.getElementById(id);
  const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"];
  const human = (s) => String(s).replaceAll("_", " ");

  const state = {
    queue: [], // leased items from /next: the first is shown, the rest preloaded
    chosen: {}, // task -> label for the shown item
    active: 0, // index of the active task
    key: null, // idempotency key of the shown item's answer (one per display)
    sent: null, // the answer last sent with that key, unconfirmed ("" once confirmed)
    shownAt: 0,
    busy: false, // an answer or undo is on its way
    refillSeq: 0, // only the latest /next answer is applied
    loading: true,
    answered: [], // ids answered this session, in order (to drop them from stale /next answers)
    filter: null, // the active task's label filter while typing it, else null
    done: 0,
  };

  const newKey = () =>
    window.crypto && crypto.randomUUID
      ? crypto.randomUUID()
      : `k-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;

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

  const message = (res) => (res.data && res.data.message) || `error ${res.status}`;

  // Retries network failures and 5xx with the very same request (same idempotency key),
  // backing off; after about a minute and a half it gives up and says so.
  async function send(method, path, body) {
    let wait = 300;
    for (let attempt = 1; attempt <= 12; attempt += 1) {
      try {
        const res = await call(method, path, body);
        if (res.status < 500) return res;
        status(`server error ${res.status}; retrying (${attempt})…`, "warn");
      } catch (e) {
        if (e.message === "signed out") throw e;
        status(`connection lost; retrying (${attempt})…`, "warn");
      }
      await new Promise((ok) => setTimeout(ok, wait));
      wait = Math.min(wait * 2, 15000);
    }
    throw new Error("not saved: the server does not answer. Your answer is still here; press Enter to retry.");
  }

  // Leases the next posts. Applied only if no newer refill started meanwhile; posts answered
  // since it was sent are dropped from it; the post on screen stays on screen.
  async function refill() {
    const seq = ++state.refillSeq;
    const since = state.answered.length;
    state.loading = true;
    let res;
    try {
      res = await send("GET", "/v1/labeling/next?n=2");
      if (!res.ok) throw new Error(message(res));
    } catch (e) {
      if (seq === state.refillSeq) {
        state.loading = false;
        if (!state.queue.length) show(); // the empty state, with the error beside it
      }
      throw e;
    }
    if (seq !== state.refillSeq) return;
    const gone = new Set(state.answered.slice(since));
    let items = res.data.items.filter((i) => !gone.has(i.id));
    const current = state.queue[0];
    if (current) items = [current, ...items.filter((i) => i.id !== current.id)];
    state.queue = items;
    state.loading = false;
    $("remaining").textContent = res.data.remaining;
    if (!current) show();
  }

  const background = () => refill().catch((e) => status(e.message, "error"));

  function show() {
    const item = state.queue[0];
    $("item").hidden = !item;
    $("empty").hidden = !!item || state.loading;
    $("loading").hidden = !!item || !state.loading;
    if (!item) return;
    state.key = newKey();
    state.sent = null;
    state.shownAt = performance.now();
    state.active = 0;
    state.filter = null;
    state.chosen = {};
    for (const t of taskNames) {
      const s = item.suggestion && item.suggestion[t];
      state.chosen[t] = s && schema[t].includes(s.label) ? s.label : schema[t][0];
    }
    $("text").textContent = item.text;
    $("channel").textContent = item.channel || "post";
    const a = item.author || {};
    $("author").hidden = !a.handle;
    $("handle").textContent = a.handle ? (a.handle.startsWith("@") ? a.handle : `@${a.handle}`) : "";
    $("verified").hidden = !a.verified;
    $("followers").textContent = a.handle
      ? `${new Intl.NumberFormat("en", { notation: "compact" }).format(Number(a.followers || 0))} followers`
      : "";
    $("source").textContent = `from ${human(item.source)}`;
    $("item-model").textContent = item.model_version ? `scored by ${item.model_version}` : "";
    $("agreement").hidden = !(item.needed >= 2);
    const c = item.context && item.context.customer;
    const facts = c
      ? [
          c.id && `customer ${c.id}`,
          c.tier && `${c.tier} tier`,
          c.lifetime_value && `lifetime value ${Number(c.lifetime_value).toLocaleString("en")}`,
          c.open_tickets && `${c.open_tickets} open ticket${c.open_tickets === 1 ? "" : "s"}`,
          c.recent_contacts && c.recent_contacts.length && `${c.recent_contacts.length} recent contacts`,
        ].filter(Boolean)
      : [];
    $("context").hidden = !facts.length;
    $("context-text").textContent = facts.join(" · ");
    closeFlag();
    buildTasks(item);
    focusActive();
  }

  // One fieldset per task; every label a toggle button, the chosen one pressed. Only the chosen
  // button of each task is in the Tab order (a roving tab stop), so Tab walks the tasks.
  function buildTasks(item) {
    const box = $("tasks");
    box.replaceChildren();
    taskNames.forEach((task, ti) => {
      const row = document.createElement("fieldset");
      row.className = "task";
      row.dataset.task = task;
      const legend = document.createElement("legend");
      legend.className = "task-name";
      legend.textContent = human(task);
      row.appendChild(legend);
      const filter = document.createElement("div");
      filter.className = "filter";
      filter.hidden = true;
      row.appendChild(filter);
      const buttons = document.createElement("div");
      buttons.className = "choices";
      const s = item.suggestion && item.suggestion[task];
      schema[task].forEach((label, li) => {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "choice";
        b.dataset.label = label;
        if (li < KEYS.length) {
          const k = document.createElement("span");
          k.className = "key";
          k.setAttribute("aria-hidden", "true");
          k.textContent = KEYS[li];
          b.appendChild(k);
        }
        const name = document.createElement("span");
        name.className = "label";
        name.textContent = human(label);
        b.appendChild(name);
        if (s && s.label === label) {
          b.classList.add("suggested");
          const hint = document.createElement("span");
          hint.className = `hint${s.confidence < 0.5 ? " unsure" : ""}`;
          hint.textContent = `suggested ${Number(s.confidence).toFixed(2)}`;
          b.appendChild(hint);
        }
        b.addEventListener("click", () => {
          state.active = ti;
          pick(task, label);
        });
        buttons.appendChild(b);
      });
      row.appendChild(buttons);
      row.addEventListener("focusin", () => {
        if (state.active !== ti) {
          state.active = ti;
          state.filter = null;
          update();
        }
      });
      box.appendChild(row);
    });
    update();
  }

  function update() {
    document.querySelectorAll("#tasks fieldset.task").forEach((row, ti) => {
      const task = row.dataset.task;
      const active = ti === state.active;
      row.classList.toggle("active", active);
      const filtering = active && state.filter !== null;
      const f = filtering ? state.filter.toLowerCase() : "";
      const filter = row.querySelector(".filter");
      filter.hidden = !filtering;
      filter.textContent = filtering ? `filter: ${state.filter}▏ (Enter picks the first match, Esc cancels)` : "";
      row.querySelectorAll("button.choice").forEach((b) => {
        const on = state.chosen[task] === b.dataset.label;
        b.setAttribute("aria-pressed", String(on));
        b.tabIndex = on ? 0 : -1;
        b.hidden = Boolean(f) && !b.dataset.label.toLowerCase().includes(f) && !human(b.dataset.label).includes(f);
      });
    });
  }

  function chosenButton(ti) {
    const row = document.querySelectorAll("#tasks fieldset.task")[ti];
    return row && row.querySelector('button.choice[aria-pressed="true"]');
  }

  function focusActive() {
    const b = chosenButton(state.active);
    if (b) b.focus({ preventScroll: false });
  }

  function pick(task, label) {
    state.chosen[task] = label;
    update();
    focusActive();
  }

  function moveTask(step) {
    state.active = (state.active + step + taskNames.length) % taskNames.length;
    state.filter = null;
    update();
    focusActive();
  }

  function cycleLabel(step) {
    const task = taskNames[state.active];
    const labels = schema[task];
    const i = labels.indexOf(state.chosen[task]);
    pick(task, labels[(i + step + labels.length) % labels.length]);
  }

  function setBusy(on) {
    state.busy = on;
    $("item").classList.toggle("saving", on);
    $("item").setAttribute("aria-busy", String(on));
  }

  async function answer(kind, extra = {}) {
    const item = state.queue[0];
    if (!item || state.busy) return;
    const body = { kind, ...extra };
    if (kind === "label") body.labels = { ...state.chosen };
    // A changed answer after an unconfirmed send is a new answer: it gets a new key (the
    // server then says whether the first one had landed). The same answer keeps its key.
    const what = JSON.stringify(body);
    if (state.sent !== null && state.sent !== what) state.key = newKey();
    state.sent = what;
    body.idempotency_key = state.key;
    body.duration_ms = Math.round(performance.now() - state.shownAt);
    setBusy(true);
    status("saving…", "saving");
    try {
      const res = await send("POST", `/v1/labeling/items/${item.id}/answer`, body);
      if (res.ok) {
        if (kind === "label" && !res.data.replay) state.done += 1;
        $("done-count").textContent = state.done;
        status(kind === "label" ? "saved" : kind === "skip" ? "skipped" : "flagged for review", "ok");
      } else {
        status(message(res), "error");
      }
      if (res.ok || res.status === 409 || res.status === 404) {
        // Confirmed (or no longer answerable): the preloaded post comes next, at once.
        state.answered.push(item.id);
        state.queue.shift();
        state.loading = state.queue.length === 0;
        show();
        background();
      }
    } catch (e) {
      status(e.message, "error");
    } finally {
      setBusy(false);
    }
  }

  async function undo() {
    if (state.busy) return;
    setBusy(true);
    status("undoing…", "saving");
    try {
      const res = await send("POST", "/v1/labeling/undo");
      if (res.ok) {
        if (res.data.kind === "label" && state.done > 0) state.done -= 1;
        $("done-count").textContent = state.done;
        state.answered = state.answered.filter((id) => id !== res.data.item_id);
        state.queue = []; // the undone post comes back first
        state.loading = true;
        show();
        await refill();
        status(`undone: the ${res.data.kind === "label" ? "labeled" : res.data.kind === "skip" ? "skipped" : "flagged"} post is back`, "ok");
      } else {
        status(res.status === 404 ? "nothing to undo" : message(res), "error");
      }
    } catch (e) {
      status(e.message, "error");
    } finally {
      setBusy(false);
    }
  }

  function openFlag() {
    $("flag-box").hidden = false;
    $("flag-note").value = "";
    $("flag-note").focus();
  }

  function closeFlag() {
    const wasOpen = !$("flag-box").hidden;
    $("flag-box").hidden = true;
    if (wasOpen && document.activeElement === $("flag-note")) focusActive();
  }

  let helpReturn = null;
  function toggleHelp(force) {
    const help = $("help");
    const open = force === undefined ? help.hidden : force;
    if (open === !help.hidden) return;
    help.hidden = !open;
    if (open) {
      helpReturn = document.activeElement;
      $("help-panel").focus();
    } else if (helpReturn && document.contains(helpReturn)) {
      helpReturn.focus();
    } else {
      focusActive();
    }
  }

  function onFilterKey(e) {
    e.preventDefault();
    const task = taskNames[state.active];
    if (e.key === "Escape") state.filter = null;
    else if (e.key === "Backspace") state.filter = state.filter.slice(0, -1);
    else if (e.key === "Enter") {
      const f = state.filter.toLowerCase();
      const hit = schema[task].find((l) => l.toLowerCase().includes(f) || human(l).includes(f));
      state.filter = null;
      if (hit) state.chosen[task] = hit;
    } else if (e.key.length === 1) state.filter += e.key;
    update();
    focusActive();
  }

  document.addEventListener("keydown", (e) => {
    if (e.isComposing) return;
    const t = e.target;
    if (t === $("flag-note")) {
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
    if (!$("help").hidden) {
      const onButton = $("help").contains(t) && t.tagName === "BUTTON";
      if ((e.key === "Enter" || e.key === " ") && onButton) return; // Close: native click
      e.preventDefault(); // the list is modal: nothing else happens behind it
      if (e.key === "Escape" || e.key === "?") toggleHelp(false);
      else if (e.key === "Tab") $("btn-help-close").focus();
      return;
    }
    if (e.altKey || e.metaKey) return;
    // A held key must not answer post after post.
    if (e.repeat && ["Enter", "s", "f", "u", "z", "Z"].includes(e.key)) return e.preventDefault();
    if (e.ctrlKey) {
      if (e.key === "z" || e.key === "Z") {
        e.preventDefault();
        undo();
      }
      return;
    }
    if (["INPUT", "SELECT", "TEXTAREA"].includes(t.tagName)) return;
    const item = state.queue[0];
    if (item && state.filter !== null) return onFilterKey(e);
    const inTasks = $("tasks").contains(t);
    // Enter or Space on another button or link (Skip, Sign out...) does what it says.
    if ((e.key === "Enter" || e.key === " ") && !inTasks && t.closest && t.closest("button, a")) return;
    if (e.key === " " && inTasks) return; // Space presses the focused label: native click
    const keyIndex = KEYS.indexOf(e.key);
    if (item && keyIndex >= 0 && !e.shiftKey) {
      e.preventDefault();
      const labels = schema[taskNames[state.active]];
      if (keyIndex < labels.length) pick(taskNames[state.active], labels[keyIndex]);
      return;
    }
    if (e.key === "Tab") {
      // Within the tasks Tab moves task by task (wrapping); from the last one Tab leaves them
      // (and from the first, Shift+Tab does) so the buttons and links stay reachable.
      const next = state.active + (e.shiftKey ? -1 : 1);
      const outside = !inTasks && t !== document.body && t !== app;
      if (!item || outside || next < 0 || next >= taskNames.length) return;
      e.preventDefault();
      moveTask(e.shiftKey ? -1 : 1);
      return;
    }
    const handlers = {
      Enter: () => item && answer("label"),
      s: () => item && answer("skip"),
      f: () => item && !state.busy && openFlag(),
      u: () => undo(),
      "?": () => toggleHelp(true),
      "/": () => {
        if (!item) return;
        state.filter = "";
        update();
      },
      ArrowDown: () => item && moveTask(1),
      ArrowUp: () => item && moveTask(-1),
      ArrowRight: () => item && cycleLabel(1),
      ArrowLeft: () => item && cycleLabel(-1),
      Escape: () => closeFlag(),
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
  $("btn-flag-send").addEventListener("click", () => {
    const note = $("flag-note").value.trim();
    closeFlag();
    answer("flag", note ? { note } : {});
  });
  $("btn-undo").addEventListener("click", undo);
  $("btn-undo-empty").addEventListener("click", undo);
  $("btn-help").addEventListener("click", () => toggleHelp(true));
  $("btn-help-close").addEventListener("click", () => toggleHelp(false));
  $("help").addEventListener("click", (e) => {
    if (e.target === $("help")) toggleHelp(false);
  });
  window.addEventListener("beforeunload", (e) => {
    if (state.busy) e.preventDefault(); // an answer is on its way: ask before leaving
  });

  setInterval(() => {
    if (!state.queue.length && !state.busy && !state.loading) background();
  }, 15000);
  show();
  background();
})();
