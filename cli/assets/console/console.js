// The relaybox console page: polls api/overview, draws the throughput chart
// with uPlot, lists, filters, shows, retries and purges dead letters.
// Every value from the database is put in the page as text, never as HTML.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const TOKEN_KEY = "relaybox-console-token";

  const $ = (id) => document.getElementById(id);
  let changes = null; // "token", "read_only" or "no_token", from the server
  let chart = null;
  let letters = []; // the dead letters shown, in table order
  const selected = new Set(); // their message ids

  // ---- small helpers ----

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      if (cell instanceof Node) {
        const td = document.createElement("td");
        td.appendChild(cell);
        tr.appendChild(td);
      } else {
        tr.appendChild(el("td", cell.text, cell.className));
      }
    }
    return tr;
  }

  function fill(tbodyParent, rows, emptyId) {
    const tbody = tbodyParent.querySelector("tbody");
    tbody.replaceChildren(...rows);
    $(emptyId).hidden = rows.length > 0;
    tbodyParent.hidden = rows.length === 0;
  }

  function duration(seconds) {
    if (!isFinite(seconds) || seconds < 0) seconds = 0;
    if (seconds < 10) return seconds.toFixed(1) + "s";
    if (seconds < 60) return Math.round(seconds) + "s";
    const m = Math.floor(seconds / 60);
    if (m < 60) return m + "m " + Math.round(seconds - m * 60) + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h " + (m - h * 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function time(text) {
    const d = new Date(text);
    return isNaN(d) ? String(text) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function notice(text, kind) {
    const box = $("notice");
    box.textContent = text;
    box.className = kind || "info";
    box.hidden = false;
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function getJson(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.message || response.status + " " + response.statusText);
    return body;
  }

  // ---- access ----

  function showAccess(mode) {
    if (mode === changes) return;
    changes = mode;
    const banner = $("changes-banner");
    const form = $("token-form");
    if (mode === "read_only") {
      banner.textContent = "Read-only: the console runs with --read-only.";
      banner.className = "banner read-only";
      form.hidden = true;
    } else if (mode === "no_token") {
      banner.textContent = "Read-only: RELAYBOX_CONSOLE_TOKEN is not set where the console runs.";
      banner.className = "banner read-only";
      form.hidden = true;
    } else {
      banner.textContent = token() ? "Changes enabled with your token." : "Retry and purge need the console token.";
      banner.className = "banner";
      form.hidden = false;
    }
    updateSelection();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    const mode = changes;
    changes = null;
    showAccess(mode);
  });

  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    const mode = changes;
    changes = null;
    showAccess(mode);
  });

  // ---- overview ----

  function showOverview(o) {
    $("database").textContent = o.dialect + " · tables " + o.table_prefix + "*";
    $("updated").textContent = "updated " + time(o.now);
    showAccess(o.changes);
    const s = o.status;
    const totalPending = s.topics.reduce((n, t) => n + t.pending, 0);
    $("total-pending").textContent = totalPending;
    $("dead-letter-count").textContent = s.dead_letters;
    $("parked-key-count").textContent = s.parked_keys_total;
    $("live-relays").textContent = s.live_relays;
    $("partitions").textContent = s.partitions;

    fill($("backlog"), s.topics.map((t) => {
      const tr = row([
        { text: t.topic, className: "topic" },
        { text: t.pending, className: "num pending" },
        { text: t.retrying, className: "num retrying" },
        { text: duration(t.oldest_age_seconds), className: "num oldest" },
        { text: t.served ? "yes" : (s.live_relays > 0 ? "unrouted" : "no relay"), className: "served" },
      ]);
      tr.dataset.topic = t.topic;
      return tr;
    }), "backlog-empty");

    const now = new Date(o.now).getTime();
    fill($("parked"), s.parked_keys.map((k) => {
      const tr = row([
        { text: k.key, className: "key" },
        { text: k.topic },
        { text: k.partition, className: "num" },
        { text: duration((now - new Date(k.since).getTime()) / 1000), className: "num" },
        { text: k.dead_letter_id, className: "dead-letter" },
      ]);
      tr.dataset.key = k.key;
      return tr;
    }), "parked-empty");
    const more = s.parked_keys_total - s.parked_keys.length;
    $("parked-more").textContent = more > 0 ? "and " + more + " more parked keys" : "";
    $("parked-more").hidden = more <= 0;

    fill($("leases"), s.lease_owners.map((l) => row([
      { text: l.owner, className: "owner" },
      { text: l.partitions, className: "num" },
      { text: "in " + duration((new Date(l.expires_at).getTime() - now) / 1000) },
    ])), "leases-empty");

    fill($("consumers"), o.consumers.map((c) => {
      const member = c.topic ? c.source.slice(c.source.lastIndexOf(":") + 1) : c.source;
      const tr = row([
        { text: c.group, className: "group" },
        { text: c.topic || "–" },
        { text: member },
        { text: c.position, className: "num position" },
        { text: c.head === null ? "–" : c.head, className: "num" },
        { text: c.lag === null ? "–" : c.lag, className: "num lag" },
        { text: time(c.updated_at) },
      ]);
      tr.dataset.group = c.group;
      return tr;
    }), "consumers-empty");

    drawChart(o.throughput, o.sample_every_seconds);
  }

  function drawChart(series, every) {
    $("chart-caption").textContent =
      "Messages per second between readings taken every " + every + " s (the last " +
      Math.round((300 * every) / 60) + " minutes at most): enqueued into the outbox, delivered by " +
      "relays, dead-lettered; and the pending backlog (right axis).";
    const data = [series.t, series.enqueued, series.delivered, series.dead_lettered, series.pending];
    const enough = series.t.length >= 2;
    $("chart-empty").hidden = enough;
    if (!enough) return;
    const width = Math.max(320, $("chart").clientWidth || 800);
    if (!chart) {
      chart = new uPlot({
        width: width,
        height: 240,
        scales: { x: { time: true }, rate: { auto: true }, backlog: { auto: true } },
        axes: [
          {},
          { scale: "rate", label: "messages/s" },
          { scale: "backlog", side: 1, label: "pending", grid: { show: false } },
        ],
        series: [
          {},
          { label: "enqueued/s", scale: "rate", stroke: "#2563eb", width: 2 },
          { label: "delivered/s", scale: "rate", stroke: "#16a34a", width: 2 },
          { label: "dead-lettered/s", scale: "rate", stroke: "#dc2626", width: 2 },
          { label: "pending", scale: "backlog", stroke: "#9ca3af", dash: [4, 4] },
        ],
      }, data, $("chart"));
    } else {
      chart.setData(data);
    }
  }

  window.addEventListener("resize", () => {
    if (chart) chart.setSize({ width: Math.max(320, $("chart").clientWidth), height: 240 });
  });

  async function refresh() {
    try {
      showOverview(await getJson("api/overview"));
    } catch (e) {
      $("updated").textContent = "cannot update: " + e.message;
    }
  }

  // ---- dead letters ----

  function filterQuery() {
    const params = new URLSearchParams();
    for (const [name, id] of [["topic", "filter-topic"], ["key", "filter-key"], ["error", "filter-error"], ["limit", "filter-limit"]]) {
      const value = $(id).value.trim();
      if (value) params.set(name, value);
    }
    for (const [name, id] of [["failed_after", "filter-after"], ["failed_before", "filter-before"]]) {
      const value = $(id).value;
      // datetime-local is the browser's local time; the API takes RFC 3339.
      if (value) params.set(name, new Date(value).toISOString());
    }
    return params.toString();
  }

  async function loadDeadLetters() {
    let answer;
    try {
      answer = await getJson("api/dead-letters?" + filterQuery());
    } catch (e) {
      notice("Cannot list dead letters: " + e.message, "error");
      return;
    }
    letters = answer.dead_letters;
    const shown = new Set(letters.map((d) => d.message.id));
    for (const id of [...selected]) if (!shown.has(id)) selected.delete(id);
    fill($("dead-letters"), letters.map((d) => {
      const box = document.createElement("input");
      box.type = "checkbox";
      box.className = "select";
      box.checked = selected.has(d.message.id);
      box.setAttribute("aria-label", "select " + d.message.id);
      box.addEventListener("change", () => {
        if (box.checked) selected.add(d.message.id); else selected.delete(d.message.id);
        updateSelection();
      });
      const view = el("button", "View", "view");
      view.type = "button";
      view.addEventListener("click", () => showDetail(d));
      const tr = row([
        box,
        { text: time(d.failed_at), className: "failed-at" },
        { text: d.message.topic, className: "topic" },
        { text: d.message.key === null ? "–" : d.message.key, className: "key" },
        { text: d.message.type || "–" },
        { text: d.origin },
        { text: d.attempts, className: "num" },
        { text: d.last_error, className: "error" },
        view,
      ]);
      tr.dataset.id = d.message.id;
      return tr;
    }), "dead-letters-empty");
    $("dl-shown").textContent = answer.truncated
      ? "showing the first " + answer.limit + " (raise the limit or narrow the filter)"
      : letters.length + " shown";
    updateSelection();
  }

  function updateSelection() {
    const n = selected.size;
    $("dl-selected").textContent = n + " selected";
    const allowed = changes === "token";
    $("dl-retry").disabled = n === 0 || !allowed;
    $("dl-purge").disabled = n === 0 || !allowed;
    for (const id of ["detail-retry", "detail-purge"]) $(id).disabled = !allowed;
    for (const button of document.querySelectorAll("button.change")) {
      button.title = allowed ? "" : "Changes are disabled: the console is read-only.";
    }
    $("dl-select-all").checked = letters.length > 0 && letters.every((d) => selected.has(d.message.id));
  }

  $("dl-select-all").addEventListener("change", () => {
    for (const d of letters) {
      if ($("dl-select-all").checked) selected.add(d.message.id); else selected.delete(d.message.id);
    }
    for (const box of document.querySelectorAll("#dead-letters tbody input.select")) {
      box.checked = $("dl-select-all").checked;
    }
    updateSelection();
  });

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadDeadLetters();
  });
  $("filter-clear").addEventListener("click", () => {
    for (const id of ["filter-topic", "filter-key", "filter-error", "filter-after", "filter-before"]) $(id).value = "";
    $("filter-limit").value = "100";
    loadDeadLetters();
  });
  $("dl-refresh").addEventListener("click", loadDeadLetters);

  // ---- detail ----

  function decodePayload(message) {
    const bytes = Uint8Array.from(atob(message.payload), (c) => c.charCodeAt(0));
    try {
      const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
      if (/json/i.test(message.content_type)) {
        try {
          return { kind: message.content_type + ", " + bytes.length + " bytes", text: JSON.stringify(JSON.parse(text), null, 2) };
        } catch (e) { /* shown as text */ }
      }
      return { kind: message.content_type + ", " + bytes.length + " bytes", text: text };
    } catch (e) {
      return { kind: message.content_type + ", " + bytes.length + " bytes, base64", text: message.payload };
    }
  }

  let detailOf = null;

  function showDetail(d) {
    detailOf = d;
    const m = d.message;
    $("detail-id").textContent = m.id;
    const fields = $("detail-fields");
    fields.replaceChildren();
    for (const [name, value] of [
      ["Topic", m.topic], ["Key", m.key === null ? "–" : m.key], ["Type", m.type || "–"],
      ["Origin", d.origin], ["Attempts", d.attempts], ["Created", time(m.created_at)],
      ["Failed", time(d.failed_at)], ["Last error", d.last_error],
    ]) {
      const div = document.createElement("div");
      div.append(el("dt", name), el("dd", value));
      fields.appendChild(div);
    }
    $("detail-headers").textContent = JSON.stringify(m.headers || {}, null, 2);
    const payload = decodePayload(m);
    $("detail-payload-kind").textContent = "(" + payload.kind + ")";
    $("detail-payload").textContent = payload.text;
    $("detail").showModal();
  }

  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail-retry").addEventListener("click", () => { $("detail").close(); act("retry", [detailOf.message.id]); });
  $("detail-purge").addEventListener("click", () => { $("detail").close(); act("purge", [detailOf.message.id]); });

  // ---- changes ----

  function confirmDialog(text, ok) {
    return new Promise((resolve) => {
      const dialog = $("confirm");
      $("confirm-text").textContent = text;
      $("confirm-ok").textContent = ok;
      const done = (answer) => {
        $("confirm-ok").onclick = null;
        $("confirm-cancel").onclick = null;
        dialog.onclose = null;
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      $("confirm-ok").onclick = () => done(true);
      $("confirm-cancel").onclick = () => done(false);
      dialog.onclose = () => done(false);
      dialog.showModal();
    });
  }

  async function act(what, ids) {
    const n = ids.length;
    const question = what === "purge"
      ? "Purge " + (n === 1 ? "this dead letter" : n + " dead letters") + " for good? This cannot be undone."
      : "Retry " + (n === 1 ? "this dead letter" : n + " dead letters") + "? " +
        (n === 1 ? "It goes" : "They go") + " back to the outbox and a relay delivers " + (n === 1 ? "it" : "them") + " again.";
    if (!(await confirmDialog(question, what === "purge" ? "Purge" : "Retry"))) {
      notice("Nothing " + (what === "purge" ? "purged" : "retried") + ".", "info");
      return;
    }
    const headers = { "Content-Type": "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    let response, body;
    try {
      response = await fetch("api/dead-letters/" + what, { method: "POST", headers: headers, body: JSON.stringify({ ids: ids }) });
      body = await response.json().catch(() => ({}));
    } catch (e) {
      notice("The request failed: " + e.message, "error");
      return;
    }
    if (!response.ok) {
      notice("Refused (" + response.status + "): " + (body.message || response.statusText), "error");
      return;
    }
    const done = what === "purge" ? body.purged : body.retried;
    const unit = done === 1 ? " dead letter" : " dead letters";
    notice(what === "purge"
      ? "Purged " + done + unit + "."
      : "Retried " + done + unit + ": back in the outbox for the relay.", "ok");
    for (const id of ids) selected.delete(id);
    await loadDeadLetters();
    refresh();
  }

  $("dl-retry").addEventListener("click", () => act("retry", [...selected]));
  $("dl-purge").addEventListener("click", () => act("purge", [...selected]));

  // ---- start ----

  refresh();
  loadDeadLetters();
  setInterval(refresh, REFRESH_MS);
})();
