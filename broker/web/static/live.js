// Live rows for the home page: an EventSource on /api/stream with the filter form's values.
// Each `event` message is an /api/events item plus `topic`; its row is built like the server's
// (templates/_event_row.html, broker/web/home.py loc_summary) and put at the top of table#events.
(function () {
  "use strict";
  var MAX_ROWS = 500;
  var form = document.getElementById("live-filter");
  var tbody = document.querySelector("table#events tbody");
  var status = document.getElementById("stream-status");
  if (!form || !tbody || !status || !window.EventSource) { return; }

  function setStatus(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  function deg(x) {
    return Math.abs(x) >= 0.01 ? x.toFixed(3) + "°" : (x * 3600).toFixed(2) + '"';
  }
  function signed(x) { return (x >= 0 ? "+" : "") + x.toFixed(3); }
  function locSummary(loc) {
    if (!loc) { return ""; }
    var where = (loc.ra_deg != null && loc.dec_deg != null)
      ? "RA " + loc.ra_deg.toFixed(3) + "°, Dec " + signed(loc.dec_deg) + "°" : "";
    if (loc.kind === "point") {
      if (loc.error_radius_deg != null) {
        where += " ± " + deg(loc.error_radius_deg);
        if (loc.containment != null) { where += " (" + Math.round(loc.containment * 100) + " %)"; }
      }
      return where;
    }
    var head = "sky map" + (loc.area_90_deg2 != null
      ? ", 90 % " + Math.round(loc.area_90_deg2).toLocaleString("en-US") + " deg²" : "");
    return head + (where ? ", peak " + where : "");
  }
  function groupHref(key) {
    return "/groups/" + encodeURIComponent(key).replace(/%3A/gi, ":");
  }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    if (text !== null) { td.textContent = text; }
    tr.appendChild(td);
    return td;
  }
  function row(it) {
    var tr = document.createElement("tr");
    tr.dataset.eventId = it.id;
    tr.className = "new" + (it.retracted ? " retracted" : "");
    cell(tr, it.t0, "t0");
    cell(tr, it.source + " · " + it.mission + (it.instrument ? " · " + it.instrument : ""));
    cell(tr, it.category || "");
    var id = cell(tr, null, "id");
    var a = document.createElement("a");
    a.href = groupHref(it.group_key);
    a.textContent = it.upstream_id;
    id.appendChild(a);
    id.appendChild(document.createElement("br"));
    var full = document.createElement("span");
    full.className = "muted small";
    full.textContent = it.id;
    id.appendChild(full);
    var kind = cell(tr, it.alert_type);
    if (it.retracted) {
      var b = document.createElement("span");
      b.className = "badge retracted-badge";
      b.textContent = "retracted";
      kind.appendChild(document.createTextNode(" "));
      kind.appendChild(b);
    }
    cell(tr, locSummary(it.localization), "loc");
    return tr;
  }

  var params = new URLSearchParams();
  ["source", "category", "mission", "alert_type", "topic"].forEach(function (name) {
    var el = form.elements[name];
    if (el && el.value) { params.set(name, el.value); }
  });
  var url = "/api/stream" + (params.toString() ? "?" + params.toString() : "");
  var kafka = "live";
  setStatus("connecting", "connecting…");
  var es = new EventSource(url);
  es.onopen = function () {
    setStatus(kafka === "live" ? "live" : "waiting", kafka === "live" ? "live" : "live (Kafka unreachable, retrying)");
  };
  es.onerror = function () {
    setStatus("reconnecting", "reconnecting…");
  };
  es.addEventListener("status", function (e) {
    var s = JSON.parse(e.data);
    kafka = s.state;
    if (s.state === "live") { setStatus("live", "live"); }
    else if (s.state === "unreachable") { setStatus("waiting", "live (Kafka unreachable, retrying)"); }
    else { setStatus("connecting", "connecting to Kafka…"); }
  });
  es.addEventListener("event", function (e) {
    var it = JSON.parse(e.data);
    var old = tbody.querySelector('tr[data-event-id="' + CSS.escape(it.id) + '"]');
    if (old) { old.remove(); }
    tbody.insertBefore(row(it), tbody.firstChild);
    while (tbody.rows.length > MAX_ROWS) { tbody.deleteRow(-1); }
    var none = document.getElementById("no-events");
    if (none) { none.remove(); }
  });
  es.addEventListener("reload", function () {
    es.close();
    setStatus("reconnecting", "reloading…");
    window.location.reload();
  });
})();
