// p2pnode web app: live entries and status over server-sent events, copy buttons, local times, and
// Ctrl+Enter to post. Everything works without it; it only adds. Text is inserted only as the server
// rendered (and escaped) it, or with textContent.
"use strict";

function relative(ts, now) {
  const s = Math.floor((now - ts) / 1000);
  if (s < -120) return "in the future";
  if (s < 45) return "just now";
  if (s < 3600) return Math.max(1, Math.round(s / 60)) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  if (s < 7 * 86400) return Math.floor(s / 86400) + " d ago";
  return null;  // older: keep the date the server wrote
}

function refreshTimes(root) {
  const now = Date.now();
  for (const el of root.querySelectorAll("time[data-ts]")) {
    const ts = Number(el.dataset.ts);
    const text = relative(ts, now);
    if (text) el.textContent = text;
    const link = el.parentElement;
    if (link && !link.dataset.local && Number.isFinite(ts)) {
      const d = new Date(ts);
      if (!isNaN(d)) { link.title = d.toLocaleString(); link.dataset.local = "1"; }
    }
  }
}

function placeEntry(list, key, html, firstPage) {
  if (list.querySelector('li[data-key="' + key + '"]')) return false;
  const items = Array.from(list.children);
  const template = document.createElement("template");
  template.innerHTML = html.trim();
  const node = template.content.firstElementChild;
  if (!node) return false;
  // newest first: before the first item that is older than this one
  for (const item of items) {
    if (item.dataset.key < key) {
      if (!firstPage && item === items[0]) return false;  // newer than this page: it belongs to a newer one
      list.insertBefore(node, item);
      node.classList.add("fresh");
      return true;
    }
  }
  if (firstPage && !document.querySelector('a[rel="next"]')) {  // the whole view is shown: it goes last
    list.appendChild(node);
    node.classList.add("fresh");
    return true;
  }
  return false;  // older than everything shown: it belongs on an older page
}

function live() {
  const main = document.getElementById("main");
  if (!main || !window.EventSource) return;
  const view = main.dataset.live || "";
  const after = main.dataset.after || "0";
  const firstPage = !new URLSearchParams(location.search).has("before");
  const source = new EventSource("/events?view=" + encodeURIComponent(view) + "&after=" + encodeURIComponent(after));
  source.addEventListener("entries", (event) => {
    const data = JSON.parse(event.data);
    const list = document.getElementById("entries");
    if (!list) return;
    let placed = 0;
    for (const item of data.items.slice().reverse()) {
      if (placeEntry(list, item.key, item.html, firstPage)) placed += 1;
    }
    for (const ref of data.retracted || []) {  // an entry shown here was retracted meanwhile
      for (const li of document.querySelectorAll("li.entry")) {
        if (li.dataset.ref !== ref) continue;
        const text = li.querySelector("p.text");
        if (text) {
          const note = document.createElement("p");
          note.className = "retracted";
          note.textContent = "Retracted by its author.";
          text.replaceWith(note);
        }
        const actions = li.querySelector(".actions");
        if (actions) actions.remove();
      }
    }
    const empty = document.querySelector("p.empty");
    if (empty && list.children.length) empty.hidden = true;
    if (data.more > 0) {
      const note = document.getElementById("live-note");
      if (note) {
        note.textContent = data.more + " more entries arrived; reload the page to see them in order.";
        note.hidden = false;
      }
    }
    if (placed) refreshTimes(list);
  });
  source.addEventListener("status", (event) => {
    const data = JSON.parse(event.data);
    const line = document.getElementById("netstatus");
    if (line) line.textContent = data.line;
    const peers = document.getElementById("peers");
    if (peers && typeof data.peers === "string") peers.innerHTML = data.peers;
  });
}

function copyButtons() {
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-copy]");
    if (!button) return;
    const label = button.textContent;
    try {
      await navigator.clipboard.writeText(button.dataset.copy);
      button.textContent = "Copied";
    } catch (e) {
      const range = document.createRange();
      const code = button.previousElementSibling;
      if (code) { range.selectNodeContents(code); const sel = getSelection(); sel.removeAllRanges(); sel.addRange(range); }
      button.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => { button.textContent = label; }, 2000);
  });
}

function ctrlEnter() {
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target.tagName === "TEXTAREA") {
      const form = event.target.form;
      if (form) { event.preventDefault(); form.requestSubmit(); }
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  refreshTimes(document);
  setInterval(() => refreshTimes(document), 30000);
  copyButtons();
  ctrlEnter();
  live();
});
