/* The staff monitor refreshes itself: every few seconds it fetches the server-rendered
 * fragment (?fragment=1) and swaps it in. The server escapes every user string, and the
 * fragment is parsed as an inert document before its nodes are moved in, so nothing in
 * it runs. Paused while the tab is hidden; refreshed at once when it shows again. */
(function () {
  "use strict";

  var root = document.getElementById("batchtasks-monitor");
  if (!root || !window.fetch || !window.DOMParser) {
    return;
  }
  var url = root.getAttribute("data-refresh-url");
  var every = Number(root.getAttribute("data-refresh-ms")) || 3000;
  var status = root.querySelector(".batchtasks-live-text");
  var timer = null;
  var busy = false;

  function show(kind) {
    if (!status) {
      return;
    }
    status.textContent = status.getAttribute("data-" + kind) || "";
    root.setAttribute("data-live", kind);
  }

  function schedule() {
    window.clearTimeout(timer);
    timer = document.hidden ? null : window.setTimeout(refresh, every);
  }

  function swap(html) {
    var fresh = new DOMParser()
      .parseFromString(html, "text/html")
      .getElementById("batchtasks-monitor-fragment");
    var current = document.getElementById("batchtasks-monitor-fragment");
    if (!fresh || !current) {
      return false;
    }
    current.replaceWith(document.importNode(fresh, true));
    return true;
  }

  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(url, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-Requested-With": "XMLHttpRequest" },
    })
      .then(function (response) {
        // A session that ended answers with the login page, through a redirect.
        if (response.redirected) {
          return "signed-out";
        }
        if (!response.ok) {
          return "stale";
        }
        return response.text().then(function (html) {
          return swap(html) ? "live" : "stale";
        });
      })
      .catch(function () {
        return "stale";
      })
      .then(function (kind) {
        busy = false;
        show(kind);
        if (kind !== "signed-out") {
          schedule();
        }
      });
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      window.clearTimeout(timer);
      show("paused");
    } else {
      show("live");
      refresh();
    }
  });

  schedule();
})();
