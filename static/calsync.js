// calsync dashboard: live feeds, relative times, confirmations. Small on purpose; the pages work without it.
(function () {
  "use strict";
  var units = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];

  function human(seconds) {
    var left = Math.floor(Math.abs(seconds)), parts = [];
    for (var i = 0; i < units.length && parts.length < 2; i++) {
      var n = Math.floor(left / units[i][1]);
      left -= n * units[i][1];
      if (n || parts.length) parts.push(n + " " + units[i][0]);
    }
    if (parts.length === 2 && parts[1].indexOf("0 ") === 0) parts.pop();
    return parts.join(" ") || "0 s";
  }

  // Keep "3 s ago" and "expires in 6 d" true while the page stays open.
  function tick() {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var delta = (Date.now() - Date.parse(el.getAttribute("datetime"))) / 1000, text = el.textContent;
      if (isNaN(delta)) return;
      if (/^expire/.test(text)) el.textContent = delta < 0 ? "expires in " + human(delta) : "expired " + human(delta) + " ago";
      else if (/ago$|^in |^just now$/.test(text)) el.textContent = Math.abs(delta) < 1 ? "just now" : delta > 0 ? human(delta) + " ago" : "in " + human(delta);
    });
  }

  // Feeds: fetch rows newer than the cursor with the session cookie and put them on top.
  function follow(body) {
    var live = document.querySelector(".live"), busy = false;
    function poll() {
      if (busy || document.hidden) return;
      busy = true;
      var url = body.dataset.refresh + (body.dataset.refresh.indexOf("?") < 0 ? "?" : "&") + "after=" + body.dataset.cursor;
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (r) {
          if (!r.ok) throw new Error(r.status);
          if (r.headers.get("X-Gap")) { window.location.reload(); return ""; }  // more came than one fragment holds
          body.dataset.cursor = r.headers.get("X-Cursor") || body.dataset.cursor;
          return r.text();
        })
        .then(function (html) {
          if (html.trim()) {
            var tmp = document.createElement("tbody");
            tmp.innerHTML = html;
            var rows = Array.prototype.slice.call(tmp.children);
            rows.reverse().forEach(function (row) { row.classList.add("fresh"); body.insertBefore(row, body.firstChild); });
            var empty = document.querySelector(".empty-note");
            if (empty) empty.remove();
          }
          if (live) live.classList.remove("paused");
        })
        .catch(function () { if (live) live.classList.add("paused"); })
        .then(function () { busy = false; });
    }
    setInterval(poll, 2000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("tbody[data-refresh]").forEach(follow);
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) { if (!window.confirm(form.dataset.confirm)) e.preventDefault(); });
    });
    document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });
    setInterval(tick, 5000);
  });
})();
