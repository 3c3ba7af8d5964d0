// qanat portal: progressive enhancement only; every page works without it.
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function copyButtons() {
  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      const text = source.textContent.trim();
      try {
        await navigator.clipboard.writeText(text);
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        document.execCommand("copy");
      }
      button.textContent = "Copied";
      button.classList.add("done");
      setTimeout(() => { button.textContent = "Copy"; button.classList.remove("done"); }, 2000);
    });
  });
}

function confirmations() {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
}

function cell(text, code) {
  const td = document.createElement("td");
  if (code) {
    const c = document.createElement("code");
    c.textContent = text;
    td.appendChild(c);
  } else {
    td.textContent = text;
  }
  return td;
}

function fillRows(tbody, rows, columns, emptyText) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(emptyText);
    td.colSpan = columns;
    tr.appendChild(td);
    tbody.appendChild(tr);
    return;
  }
  rows.forEach((cells) => {
    const tr = document.createElement("tr");
    cells.forEach((td) => tr.appendChild(td));
    tbody.appendChild(tr);
  });
}

// One timestamp format everywhere: "2026-12-01 23:14:05 CET", in local time.
function pad(n) { return String(n).padStart(2, "0"); }

function localTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  let zone = "";
  try {
    const parts = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" }).formatToParts(d);
    zone = (parts.find((p) => p.type === "timeZoneName") || {}).value || "";
  } catch (_) {
    zone = "";
  }
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} ${zone}`.trim();
}

function timeCell(iso) {
  const td = document.createElement("td");
  if (!iso) { td.textContent = "–"; return td; }
  const t = document.createElement("time");
  t.dateTime = iso;
  t.textContent = localTime(iso);
  td.appendChild(t);
  return td;
}

function localTimes() {
  document.querySelectorAll("time[datetime]").forEach((t) => {
    t.title = t.textContent;
    t.textContent = localTime(t.dateTime);
  });
}

// The audit filter's datetime-local fields are local time: send the offset.
function timezoneFields() {
  document.querySelectorAll("input[data-tz-offset]").forEach((input) => {
    input.value = String(new Date().getTimezoneOffset());
  });
}

function connectorCell(c) {
  const td = document.createElement("td");
  const name = document.createElement("strong");
  name.textContent = c.name || c.id;
  const session = document.createElement("code");
  session.className = "small muted";
  session.textContent = c.id;
  td.append(name, document.createElement("br"), session);
  return td;
}

function render(status) {
  const connectors = document.getElementById("connectors");
  const endpoints = document.getElementById("endpoints");
  fillRows(connectors, status.connectors.map((c) => [
    connectorCell(c), cell(c.version), cell(c.source_address), timeCell(c.connected_since),
    cell(c.keepalive_rtt_ms === null ? "–" : c.keepalive_rtt_ms.toFixed(1) + " ms"),
  ]), 5, "No connector is connected.");
  fillRows(endpoints, status.endpoints.map((e) => [
    cell(e.name, true), cell(e.connectors.join(", ")), cell(e.targets.join(", ")),
  ]), 3, "No endpoint is served.");
  document.getElementById("connector-count").textContent = String(status.connectors.length);
  const state = document.getElementById("state");
  state.textContent = status.status.charAt(0).toUpperCase() + status.status.slice(1);
  state.className = "badge " + status.status;
  document.getElementById("refreshed").textContent =
    "updated " + localTime(new Date().toISOString()).slice(11);
}

function liveStatus() {
  const root = document.querySelector("[data-status-url]");
  if (!root) return;
  const url = root.dataset.statusUrl;
  const every = Number(root.dataset.refreshMs) || 3000;
  async function tick() {
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRF-Token": csrfToken() },
      });
      if (response.ok) render(await response.json());
    } catch (_) {
      // The portal may be restarting; try again at the next tick.
    }
  }
  setInterval(tick, every);
  tick();
}

// A token is shown in the answer to the POST that issued it. Point the
// address bar back at the plain page, so that a reload is a GET (which never
// shows a token) instead of re-sending the form (which would renew again).
function forgetPost() {
  const root = document.querySelector("[data-page-url]");
  if (root && (document.getElementById("token") || document.getElementById("key"))) {
    history.replaceState(null, "", root.dataset.pageUrl);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  forgetPost();
  localTimes();
  timezoneFields();
  copyButtons();
  confirmations();
  liveStatus();
});
