/*
 * batchtasks: the running-tasks indicator ({% load batchtasks %}{% batchtasks_indicator %}).
 *
 * Why polling by default, and not long-polling or Server-Sent Events: the indicator must
 * work under `runserver` and under gunicorn's sync workers, where a request held open pins
 * a whole worker for as long as the tab stays open: a handful of open tabs would take every
 * worker from everyone else. A poll is one indexed query; unchanged answers are a 304
 * without a body (ETag / If-None-Match), decided by the poll token's one query. Under an
 * ASGI server with BATCHTASKS["INDICATOR_PUSH"] on, the template gives `data-events-url`
 * and the indicator listens to that stream instead (EventSource, event "tasks" with the
 * same JSON, its ETag as the event id); if the stream cannot be opened or breaks for
 * good it falls back to polling. The polling pace follows what the user can notice:
 * every second while one of their tasks is unfinished, backing off to 30 s when idle,
 * and not at all in a hidden tab (visibilitychange), with an immediate poll when the tab
 * comes back, on focus, on `batchtask:submitted` and on `window.batchtasks.refresh()`.
 *
 * Events on `document` (SuperOffice's ONBATCHEVENT, one event per fact):
 *   batchtask:update    once per task whose JSON changed, and for tasks seen first;
 *   batchtask:finished  once per (task id, attempt) reaching a final state, except for
 *                       tasks already final in the first poll after the page loaded
 *                       (tasks announced by `batchtask:submitted` with an id always count).
 * Every user string is rendered with textContent, every URL checked before setAttribute.
 * Its own words come from the app's JavaScript catalog (the script before this one, at
 * batchtasks:jsi18n), its numbers from Intl in the indicator's language (its lang);
 * without the catalog it speaks English.
 *
 * For screen readers: a polite live region (#batchtasks-indicator-status) says when one of
 * the user's tasks appears and when one ends ("Export users as CSV: Succeeded"), not each
 * step of progress; the button is described by the tooltip, which shows on keyboard focus
 * as on hover, and Escape hides it until the pointer or the focus leaves the indicator.
 */
(function () {
  "use strict";

  const FAST_MS = 1000;
  const IDLE_MS = [2000, 4000, 8000, 16000, 30000];
  const SHOW_FINISHED_MS = 10000;
  const SUCCEEDED = 4;
  const FINISHED = 5;

  const i18n = window.django || {};
  const gettext = i18n.gettext || ((text) => text);
  const ngettext = i18n.ngettext || ((one, many, count) => (count === 1 ? one : many));

  // "%(name)s" placeholders filled from `values` (what django.interpolate does, named).
  function format(text, values) {
    return text.replace(/%\((\w+)\)s/g, (whole, key) => (key in values ? values[key] : whole));
  }

  const root = document.getElementById("batchtasks-indicator");
  if (!root || root.dataset.started) {
    return;
  }
  root.dataset.started = "true";
  const lang = root.lang || document.documentElement.lang || navigator.language || "en";
  const percentFormat = new Intl.NumberFormat(lang, { style: "percent" });
  const countFormat = new Intl.NumberFormat(lang);
  const pollUrl = root.dataset.pollUrl;
  const eventsUrl = root.dataset.eventsUrl;
  const button = root.querySelector(".batchtasks-indicator__button");
  const label = root.querySelector(".batchtasks-indicator__label");
  const list = root.querySelector(".batchtasks-indicator__list");
  const status = document.getElementById("batchtasks-indicator-status");

  const state = {
    etag: null,
    tasks: [], // the last list the server sent
    seen: new Map(), // task id -> JSON text last announced by batchtask:update
    fired: new Set(), // "id:attempt" of final tasks already announced (or final at load)
    watched: new Set(), // ids announced by batchtask:submitted
    finished: new Map(), // task id -> time until which the finished task stays shown
    firstPoll: true,
    idleStep: 0,
    timer: null,
    inFlight: false,
    again: false,
    stopped: false,
    lastPollAt: 0,
    stream: null, // the EventSource while push is in use
  };

  function isFinal(task) {
    return task.state_code >= SUCCEEDED;
  }

  function nameOf(task) {
    return task.description || task.type;
  }

  function detailOf(task) {
    const error = task.error ? { Type: task.error.type, Message: task.error.message } : null;
    return {
      Id: task.id,
      Name: task.type,
      Description: task.description,
      State: task.state_code,
      StateName: task.state,
      ProgressPercent: task.progress_percent,
      ProgressDescription: task.progress_message,
      Response: task.result,
      Error: error,
      Url: task.url,
      task: task,
    };
  }

  function dispatch(name, task) {
    document.dispatchEvent(new CustomEvent(name, { detail: detailOf(task) }));
  }

  // --- polling --------------------------------------------------------------------

  function request() {
    const headers = { Accept: "application/json", "X-Requested-With": "XMLHttpRequest" };
    if (state.etag) {
      headers["If-None-Match"] = state.etag;
    }
    // no-store: the browser's cache must neither answer for the server nor turn the
    // server's 304 into a 200 behind our back.
    return { headers: headers, credentials: "same-origin", cache: "no-store" };
  }

  async function poll() {
    if (state.stopped) {
      return;
    }
    if (state.inFlight) {
      state.again = true;
      return;
    }
    clearTimeout(state.timer);
    state.inFlight = true;
    state.lastPollAt = Date.now();
    let ok = false;
    try {
      ok = await receive(await fetch(pollUrl, request()));
    } catch (error) {
      ok = false; // offline or the server restarting: try again at the idle pace
    } finally {
      state.inFlight = false;
    }
    if (state.again) {
      state.again = false;
      poll();
      return;
    }
    schedule(ok);
  }

  async function receive(response) {
    if (response.status === 304) {
      return true;
    }
    if (response.status === 401) {
      stop(); // signed out (or the session expired): nothing to show, nobody to ask for
      return false;
    }
    if (!response.ok) {
      return false;
    }
    const body = await response.json();
    state.etag = response.headers.get("ETag");
    update(Array.isArray(body.tasks) ? body.tasks : []);
    return true;
  }

  function schedule(ok) {
    clearTimeout(state.timer);
    state.timer = null;
    if (state.stopped || state.stream || document.hidden) {
      return; // visibilitychange starts polling again
    }
    let delay;
    if (ok && state.tasks.some((task) => !isFinal(task))) {
      state.idleStep = 0;
      delay = FAST_MS;
    } else {
      delay = IDLE_MS[Math.min(state.idleStep, IDLE_MS.length - 1)];
      state.idleStep += 1;
    }
    state.timer = setTimeout(poll, delay);
  }

  // --- push (server-sent events), when the page offers it ------------------------------

  function listen() {
    if (!eventsUrl || typeof EventSource !== "function") {
      return false;
    }
    const stream = new EventSource(eventsUrl);
    stream.addEventListener("tasks", (event) => {
      const body = JSON.parse(event.data);
      state.etag = event.lastEventId || state.etag;
      update(Array.isArray(body.tasks) ? body.tasks : []);
    });
    stream.addEventListener("signed-out", () => stop());
    stream.addEventListener("error", () => {
      if (stream.readyState === EventSource.CLOSED && state.stream === stream) {
        state.stream = null; // refused (push off, signed out) or gone for good: poll
        if (!state.stopped) {
          poll();
        }
      }
    });
    state.stream = stream;
    return true;
  }

  function stop() {
    state.stopped = true;
    if (state.stream) {
      state.stream.close();
      state.stream = null;
    }
    clearTimeout(state.timer);
    state.tasks = [];
    state.finished.clear();
    render();
  }

  function refresh() {
    state.idleStep = 0;
    poll();
  }

  // --- what changed -----------------------------------------------------------------

  function update(tasks) {
    const first = state.firstPoll;
    const updated = [];
    const finished = [];
    const appeared = [];
    state.firstPoll = false;
    for (const task of tasks) {
      const text = JSON.stringify(task);
      if (!first && !state.seen.has(task.id) && !isFinal(task)) {
        appeared.push(task);
      }
      if (state.seen.get(task.id) !== text) {
        state.seen.set(task.id, text);
        updated.push(task);
      }
      if (isFinal(task) && noteFinal(task, first)) {
        finished.push(task);
      }
    }
    forgetGone(tasks);
    state.tasks = tasks;
    root.dataset.polled = "true";
    render();
    announce(appeared.concat(finished));
    // After render: a listener that looks at the indicator sees what the event says.
    updated.forEach((task) => dispatch("batchtask:update", task));
    finished.forEach((task) => dispatch("batchtask:finished", task));
  }

  function noteFinal(task, first) {
    const key = task.id + ":" + task.attempt;
    if (state.fired.has(key)) {
      return false;
    }
    state.fired.add(key);
    if (first && !state.watched.has(task.id)) {
      return false; // it finished before this page was there to see it
    }
    state.finished.set(task.id, Date.now() + SHOW_FINISHED_MS);
    setTimeout(render, SHOW_FINISHED_MS + 50);
    return true;
  }

  function forgetGone(tasks) {
    const present = new Set(tasks.map((task) => task.id));
    for (const id of state.seen.keys()) {
      if (!present.has(id)) {
        state.seen.delete(id);
      }
    }
  }

  // --- rendering (textContent and checked attributes only) -------------------------

  function element(tag, className, text) {
    const node = document.createElement(tag);
    node.className = className;
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  }

  function safeUrl(value) {
    if (typeof value !== "string" || value === "") {
      return null;
    }
    try {
      const url = new URL(value, document.baseURI);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (error) {
      return null;
    }
  }

  function resultUrl(task) {
    const result = task.result;
    const own = result && typeof result === "object" ? safeUrl(result.url) : null;
    return own || safeUrl(task.url);
  }

  function progressOf(task) {
    const bar = document.createElement("progress");
    bar.className = "batchtasks-indicator__bar";
    bar.max = 100;
    bar.value = Number(task.progress_percent) || 0;
    const percent = percentFormat.format(bar.value / 100);
    const nodes = [bar, element("span", "batchtasks-indicator__percent", percent)];
    if (task.progress_message) {
      nodes.push(element("span", "batchtasks-indicator__message", task.progress_message));
    }
    return nodes;
  }

  function outcomeOf(task) {
    const nodes = [];
    if (task.state_code !== SUCCEEDED && task.error) {
      nodes.push(element("span", "batchtasks-indicator__error", task.error.message));
    }
    const href = resultUrl(task);
    if (href) {
      const text = task.state_code === SUCCEEDED ? gettext("Result") : gettext("Details");
      const link = element("a", "batchtasks-indicator__link", text);
      link.setAttribute("href", href);
      nodes.push(link);
    }
    return nodes;
  }

  function itemOf(task) {
    const item = element("li", "batchtasks-indicator__task is-" + task.state);
    item.dataset.taskId = String(task.id);
    item.append(
      element("span", "batchtasks-indicator__name", nameOf(task)),
      element("span", "batchtasks-indicator__state", task.state_label),
      ...(isFinal(task) ? outcomeOf(task) : progressOf(task)),
    );
    return item;
  }

  function stateLine(task) {
    // TRANSLATORS: a task in the indicator's button or a screen reader's announcement:
    // its name and its state.
    return format(gettext("%(name)s: %(state)s"), { name: nameOf(task), state: task.state_label });
  }

  function labelOf(running, done) {
    if (running.length === 1) {
      return nameOf(running[0]);
    }
    if (running.length > 1) {
      const count = countFormat.format(running.length);
      return format(ngettext("%(count)s task", "%(count)s tasks", running.length), { count });
    }
    if (done.length === 1) {
      return stateLine(done[0]);
    }
    const count = countFormat.format(done.length);
    return format(
      ngettext("%(count)s task finished", "%(count)s tasks finished", done.length),
      { count },
    );
  }

  function render() {
    const now = Date.now();
    const running = state.tasks.filter((task) => !isFinal(task));
    const done = state.tasks.filter((task) => isFinal(task) && state.finished.get(task.id) > now);
    root.dataset.count = String(running.length);
    if (!running.length && !done.length) {
      root.hidden = true;
      list.replaceChildren();
      return;
    }
    const failed = done.some((task) => task.state_code === FINISHED);
    root.classList.toggle("is-running", running.length > 0);
    root.classList.toggle("is-failed", !running.length && failed);
    root.classList.toggle("is-succeeded", !running.length && !failed);
    label.textContent = labelOf(running, done);
    list.replaceChildren(...running.map(itemOf), ...done.map(itemOf));
    root.hidden = false;
  }

  function announce(tasks) {
    // Only what is new: a live region reads out every change of its text.
    if (status && tasks.length) {
      status.textContent = tasks.map(stateLine).join("; ");
    }
  }

  // --- wiring -------------------------------------------------------------------------

  function setOpen(open) {
    root.classList.toggle("is-open", open);
    button.setAttribute("aria-expanded", open ? "true" : "false");
  }

  button.addEventListener("click", () => {
    root.classList.remove("is-dismissed");
    setOpen(!root.classList.contains("is-open"));
  });
  // Escape hides the tooltip however it was shown (hover, focus or click), wherever the
  // focus is; it shows again once the pointer or the focus has left and come back.
  document.addEventListener("keydown", (event) => {
    const shown = root.classList.contains("is-open") || root.matches(":hover, :focus-within");
    if (event.key === "Escape" && shown && !root.classList.contains("is-dismissed")) {
      root.classList.add("is-dismissed");
      setOpen(false);
    }
  });
  root.addEventListener("mouseleave", () => {
    if (!root.matches(":focus-within")) {
      root.classList.remove("is-dismissed");
    }
  });
  root.addEventListener("focusout", (event) => {
    if (!root.contains(event.relatedTarget) && !root.matches(":hover")) {
      root.classList.remove("is-dismissed");
    }
  });
  document.addEventListener("batchtask:submitted", (event) => {
    const detail = event.detail || {};
    const id = detail.Id !== undefined ? detail.Id : detail.id;
    if (id !== undefined) {
      state.watched.add(id);
    }
    refresh();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(state.timer);
    } else {
      refresh();
    }
  });
  window.addEventListener("focus", () => {
    if (Date.now() - state.lastPollAt > FAST_MS) {
      refresh(); // visibilitychange usually polled a moment ago
    }
  });
  window.batchtasks = Object.assign(window.batchtasks || {}, { refresh: refresh });
  if (!listen()) {
    poll();
  }
})();
