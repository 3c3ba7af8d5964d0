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

function render(status) {
  const connectors = document.getElementById("connectors");
  const endpoints = document.getElementById("endpoints");
  fillRows(connectors, status.connectors.map((c) => [
    cell(c.id, true), cell(c.version), cell(c.source_address), cell(c.connected_since),
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
    "updated " + new Date().toLocaleTimeString();
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
  if (root && document.getElementById("token")) {
    history.replaceState(null, "", root.dataset.pageUrl);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  forgetPost();
  copyButtons();
  confirmations();
  liveStatus();
});
