/* Live progress in the batch task admin: while any task shown on the page is unfinished,
 * ask the JSON API for those tasks every 2 seconds and update their progress bars and
 * state badges in place (textContent only: user strings stay text). Stops once every
 * shown task is final; pauses while the tab is hidden. Staff without the view-all
 * permission poll for their own tasks only (the API would refuse the others). */
(function () {
  "use strict";

  var EVERY = 2000;
  var MAX_IDS = 100; // the API's limit for id=…
  var STATES = ["blocked", "new", "queued", "running", "succeeded", "failed", "cancelled", "skipped"];
  var timer = null;
  var config = null;

  function unfinishedIds() {
    var seen = {};
    var ids = [];
    document.querySelectorAll('.batchtasks-progress[data-final="0"]').forEach(function (el) {
      var id = el.getAttribute("data-task-id");
      if (id && !seen[id] && ids.length < MAX_IDS) {
        seen[id] = true;
        ids.push(id);
      }
    });
    return ids;
  }

  function each(selector, id, fn) {
    document.querySelectorAll(selector + '[data-task-id="' + id + '"]').forEach(fn);
  }

  function update(task) {
    var final = task.finished_at !== null || task.state_code >= 4;
    var message = task.progress_message || "";
    each(".batchtasks-progress", task.id, function (el) {
      var bar = el.querySelector("progress");
      var text = el.querySelector(".batchtasks-progress-text");
      if (bar) {
        bar.value = task.progress_percent;
      }
      if (text) {
        text.textContent = task.progress_percent + "%" + (message ? " " + message : "");
      }
      el.title = message;
      el.setAttribute("data-final", final ? "1" : "0");
    });
    each(".batchtasks-state", task.id, function (el) {
      if (STATES.indexOf(task.state) >= 0) {
        el.className = "batchtasks-state batchtasks-state--" + task.state;
      }
      el.textContent = task.state_label;
    });
  }

  // A task the API did not return (deleted, or not the caller's) is left as it is.
  function forget(id) {
    each(".batchtasks-progress", id, function (el) {
      el.setAttribute("data-final", "1");
    });
  }

  function schedule() {
    window.clearTimeout(timer);
    timer = null;
    if (!document.hidden && unfinishedIds().length) {
      timer = window.setTimeout(poll, EVERY);
    }
  }

  function poll() {
    var ids = unfinishedIds();
    if (!ids.length || document.hidden) {
      return;
    }
    var query = "?id=" + ids.join(",") + "&limit=" + MAX_IDS;
    if (config.scope === "all") {
      query += "&all=1";
    }
    fetch(config.url + query, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-Requested-With": "XMLHttpRequest", Accept: "application/json" },
    })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .then(function (body) {
        if (!body || !Array.isArray(body.results)) {
          return; // signed out, or no API: leave the page as it is
        }
        var returned = {};
        body.results.forEach(function (task) {
          returned[String(task.id)] = true;
          update(task);
        });
        ids.filter(function (id) { return !returned[id]; }).forEach(forget);
        schedule();
      })
      .catch(function () {
        schedule(); // a network hiccup: try again later
      });
  }

  function start() {
    var el = document.getElementById("batchtasks-admin-live");
    if (!el || !window.fetch) {
      return;
    }
    config = { url: el.getAttribute("data-api-url"), scope: el.getAttribute("data-scope") };
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) {
        window.clearTimeout(timer);
      } else {
        poll();
      }
    });
    schedule();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
