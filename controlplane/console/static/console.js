// Stanch console: the only script. Live rollouts (poll a fragment, swap it in), bake
// countdowns. Everything works without it except the live updates.
"use strict";
(function () {
  function fmt(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds >= 3600) return Math.floor(seconds / 3600) + "h" + Math.floor((seconds % 3600) / 60) + "m";
    if (seconds >= 60) return Math.floor(seconds / 60) + "m" + (seconds % 60) + "s";
    return seconds + "s";
  }
  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll("[data-until]").forEach(function (el) {
      el.textContent = fmt(parseFloat(el.getAttribute("data-until")) - now);
    });
  }
  function live(el) {
    var src = el.getAttribute("data-live");
    var every = parseInt(el.getAttribute("data-interval") || "2000", 10);
    var badge = document.getElementById("live-state");
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch(src, { credentials: "same-origin", headers: { "X-Stanch-Live": "1" }, cache: "no-store" })
        .then(function (r) {
          if (r.status === 401) { window.location = "/login?ended=1"; return null; }
          if (!r.ok) throw new Error(r.status);
          return r.text();
        })
        .then(function (html) {
          if (html === null) return;
          var open = document.activeElement && el.contains(document.activeElement);
          if (!open) el.innerHTML = html;
          if (badge) { badge.classList.remove("stale"); badge.textContent = "live"; }
          tick();
        })
        .catch(function () { if (badge) { badge.classList.add("stale"); badge.textContent = "reconnecting"; } })
        .finally(function () { busy = false; });
    }, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(live);
    setInterval(tick, 1000);
  });
})();
