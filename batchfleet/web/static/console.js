/* batchfleet console: live overview over server-sent events, charts as inline SVG.
 * No build step, no dependencies.  Data from the server (batch ids, station ids, errors) is only
 * ever put into the page with textContent / setAttribute, never as HTML. */
(function () {
  "use strict";

  var body = document.body;
  var base = body.dataset.base || "";
  var OUTCOMES = ["ok", "failed", "empty", "missing"];
  var SVG = "http://www.w3.org/2000/svg";

  function h(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function s(tag, attrs, title) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    if (title) { var t = document.createElementNS(SVG, "title"); t.textContent = title; e.appendChild(t); }
    return e;
  }

  function byId(id) { return document.getElementById(id); }
  function setText(id, value) { var e = byId(id); if (e) e.textContent = String(value); }
  function batchUrl(id) { return base + "/batches/" + encodeURIComponent(id); }
  function secs(x) { return (Math.round(x * 10) / 10).toFixed(1) + " s"; }
  function clock(ms) { return new Date(ms).toLocaleTimeString(); }

  function duration(s) {
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  }

  function fillBody(table, rows, colspan, emptyText) {
    var tbody = byId(table).tBodies[0];
    var fresh = document.createElement("tbody");
    rows.forEach(function (cells) {
      var tr = document.createElement("tr");
      cells.forEach(function (c) { tr.appendChild(c); });
      fresh.appendChild(tr);
    });
    if (!rows.length) {
      var tr = h("tr", "empty");
      var td = h("td", "", emptyText);
      td.colSpan = colspan;
      tr.appendChild(td);
      fresh.appendChild(tr);
    }
    tbody.parentNode.replaceChild(fresh, tbody);
  }

  function td(text, cls) { return h("td", cls || "", text); }

  function tdWith(child, cls) { var c = h("td", cls || ""); c.appendChild(child); return c; }

  // -- overview ------------------------------------------------------------------------------------
  function renderTiles(d) {
    var c = d.counts;
    setText("t-open", c.open);
    setText("t-leased", c.leased);
    setText("t-queued", c.queued);
    setText("t-dead", c.dead);
    setText("t-quarantined", c.quarantined);
    setText("t-uploaded", d.counters.batches_uploaded || 0);
    var lag = 0;
    Object.keys(d.kafka_lag).forEach(function (k) { lag += d.kafka_lag[k]; });
    setText("t-lag", lag);
    byId("tile-dead").classList.toggle("bad", c.dead > 0);
    byId("tile-quarantined").classList.toggle("warn", c.quarantined > 0);
    var r = d.rates, n = r.ok.length, sum = 0;
    for (var i = Math.max(n - 6, 0); i < n; i++) {
      OUTCOMES.forEach(function (o) { sum += r[o][i]; });
    }
    var elapsed = Math.max((r.now_ms - (r.t0_ms + (n - 6) * r.slot_ms)) / 1000, 1);
    setText("t-rate", (sum / elapsed).toFixed(sum / elapsed < 10 ? 1 : 0));
  }

  function renderOpen(d) {
    setText("open-count", d.open_batches.length + " shown");
    fillBody("open-batches", d.open_batches.map(function (b) {
      var a = h("a", "", b.batch_id);
      a.href = batchUrl(b.batch_id);
      var bar = h("progress");
      bar.max = Math.max(b.expected, 1);
      bar.value = b.done;
      return [
        tdWith(a), td(b.topic), tdWith(bar), td(b.done + "/" + b.expected, "num"), td(secs(b.age_s), "num"),
        td(b.deadline_in_s === undefined ? "–" : secs(b.deadline_in_s), "num"), tdWith(h("span", "state " + b.state, b.state))
      ];
    }), 7, "no open batches");
  }

  function renderProcesses(d) {
    var roles = {};
    d.processes.forEach(function (p) { roles[p.role] = (roles[p.role] || 0) + 1; });
    setText("roles", Object.keys(roles).sort().map(function (r) { return r + " " + roles[r]; }).join(" · "));
    var now = d.now_ms / 1000;
    fillBody("procs", d.processes.map(function (p) {
      return [td(p.role), td(p.name), td(p.doing || ""), td(p.started ? duration(now - p.started) : "–", "num")];
    }), 4, "no live process");
    fillBody("lag", Object.keys(d.kafka_lag).map(function (k) {
      return [td(k), td(d.kafka_lag[k], "num")];
    }), 2, "no partition reported");
    fillBody("counters", Object.keys(d.counters).sort().map(function (k) {
      return [td(k), td(d.counters[k], "num")];
    }), 2, "no counters yet");
  }

  var W = 720, H = 180, L = 44, B = 20, T = 8;  // W follows the chart's box, so text is never stretched

  function sizeTo(box) { W = Math.max(Math.round(box.clientWidth || 720), 240); }

  function niceMax(v) {
    if (v <= 0) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) { if (steps[i] * p >= v) return steps[i] * p; }
    return 10 * p;
  }

  function axes(svg, top, unit, labels) {
    var plotH = H - T - B;
    [0, 0.5, 1].forEach(function (f) {
      var y = T + plotH * (1 - f);
      svg.appendChild(s("line", { x1: L, x2: W, y1: y, y2: y, "class": "gridline" }));
      var label = s("text", { x: L - 6, y: y + 4, "text-anchor": "end", "class": "axis" });
      label.textContent = (Math.round(top * f * 10) / 10) + unit;
      svg.appendChild(label);
    });
    labels.forEach(function (item) {
      var t = s("text", { x: item[0], y: H - 5, "text-anchor": item[2] || "middle", "class": "axis" });
      t.textContent = item[1];
      svg.appendChild(t);
    });
  }

  function timeLabels() {
    var plotW = W - L;
    return [[L, "−60 min", "start"], [L + plotW / 4, "−45"], [L + plotW / 2, "−30"], [L + 3 * plotW / 4, "−15"], [W, "now", "end"]];
  }

  function chartRate(r) {
    var box = byId("chart-rate");
    sizeTo(box);
    var n = r.ok.length, plotW = W - L, plotH = H - T - B, bw = plotW / n, peak = 0, i;
    var perS = r.slot_ms / 1000;
    for (i = 0; i < n; i++) {
      var tot = 0;
      OUTCOMES.forEach(function (o) { tot += r[o][i]; });
      peak = Math.max(peak, tot / perS);
    }
    var top = niceMax(peak);
    var svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "stations per second" });
    axes(svg, top, "/s", timeLabels());
    for (i = 0; i < n; i++) {
      var y = T + plotH, x = L + i * bw;
      var tip = clock(r.t0_ms + i * r.slot_ms);
      OUTCOMES.forEach(function (o) {
        var v = r[o][i];
        if (!v) return;
        var hgt = (v / perS) / top * plotH;
        y -= hgt;
        svg.appendChild(s("rect", { x: x, y: y, width: Math.max(bw - 0.3, 0.6), height: hgt, "class": "bar-" + o }, tip + " " + o + ": " + (v / perS).toFixed(1) + "/s"));
      });
    }
    box.replaceChildren(svg);
  }

  function chartMix(r) {
    var box = byId("chart-mix");
    sizeTo(box);
    var n = r.ok.length, per = 6, cols = Math.floor(n / per), plotW = W - L, plotH = H - T - B, bw = plotW / cols;
    var svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "outcome mix per minute" });
    axes(svg, 100, "%", timeLabels());
    for (var c = 0; c < cols; c++) {
      var sums = {}, total = 0;
      OUTCOMES.forEach(function (o) {
        sums[o] = 0;
        for (var k = 0; k < per; k++) sums[o] += r[o][c * per + k];
        total += sums[o];
      });
      var x = L + c * bw, y = T + plotH;
      var when = clock(r.t0_ms + c * per * r.slot_ms);
      if (!total) continue;
      var tip = when + " — " + OUTCOMES.map(function (o) { return o + " " + sums[o] + " (" + Math.round(100 * sums[o] / total) + "%)"; }).join(", ");
      OUTCOMES.forEach(function (o) {
        if (!sums[o]) return;
        var hgt = sums[o] / total * plotH;
        y -= hgt;
        svg.appendChild(s("rect", { x: x, y: y, width: Math.max(bw - 1, 1), height: hgt, "class": "bar-" + o }, tip));
      });
    }
    box.replaceChildren(svg);
    var all = 0;
    OUTCOMES.forEach(function (o) { all += r.totals[o]; });
    OUTCOMES.forEach(function (o) {
      setText("mix-" + o, r.totals[o] + (all ? " (" + Math.round(100 * r.totals[o] / all) + "%)" : ""));
    });
  }

  function renderOverview(d) {
    renderTiles(d);
    renderOpen(d);
    renderProcesses(d);
    chartRate(d.rates);
    chartMix(d.rates);
    body.dataset.updates = String(Number(body.dataset.updates || "0") + 1);
  }

  function startOverview() {
    var live = byId("live");
    var source = new EventSource(base + "/api/overview/stream");
    source.addEventListener("overview", function (ev) {
      renderOverview(JSON.parse(ev.data));
      live.className = "live on";
      live.textContent = "live · updated " + new Date().toLocaleTimeString();
    });
    source.addEventListener("problem", function (ev) {
      live.className = "live off";
      live.textContent = "Redis unreachable: " + JSON.parse(ev.data).error;
    });
    source.onerror = function () {
      live.className = "live off";
      live.textContent = "disconnected — reconnecting…";
    };
  }

  if (body.dataset.page === "overview") startOverview();
})();
