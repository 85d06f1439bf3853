// Giao Ban — chat in the meeting (signaling/PROTOCOL.md, "Chat"): the chat panel in the side
// bar, its form, the unread badge on #toggle-chat.
//
// Messages are other people's words: they reach the page only through textContent, never as
// HTML, so "<img onerror=…>" shows as the characters it is.

import { t, has, setText, getLang, onLangChange } from "./i18n.js";

const MAX_CHARS = 1000;
// The list keeps the newest messages; the node keeps them all (history returns 200).
const MAX_SHOWN = 500;
const HOST_ROLES = new Set(["host", "cohost"]);

/** The numeric part of a message id ("m-42" -> 42), for ordering. */
function serial(id) {
  const n = Number(String(id).replace(/^m-/, ""));
  return Number.isFinite(n) ? n : 0;
}

/**
 * Wire the chat panel to `client` (a MeetingClient).
 * `toast(text, options)` shows a notice; `errorText(err)` turns a ProtocolError into a
 * sentence; `setSide(open)` opens or closes the side bar the panel lives in.
 */
export function setupChat(client, { toast, errorText, setSide }) {
  const $ = (id) => document.getElementById(id);
  const ui = {
    panel: $("chat-panel"),
    list: $("chat-list"),
    empty: $("chat-empty"),
    form: $("chat-form"),
    text: $("chat-text"),
    to: $("chat-to"),
    send: $("chat-send"),
    toggle: $("toggle-chat"),
    badge: $("chat-badge"),
  };
  if (!ui.panel || !ui.list || !ui.form || !ui.toggle) {
    console.error("giaoban: chat panel missing from the page");
    return;
  }

  /** id -> {message, li}; what the list shows. */
  const shown = new Map();
  // Ids of the messages this page sent: history does not carry participant ids.
  const mine = new Set();
  let unread = 0;
  let sending = false;

  const visible = () => !ui.panel.hidden && document.body.dataset.side === "open";

  function formatTime(iso) {
    const when = new Date(iso);
    if (Number.isNaN(when.getTime())) return "";
    return when.toLocaleTimeString(getLang() === "en" ? "en-GB" : "vi-VN", {
      hour: "2-digit",
      minute: "2-digit",
    });
  }

  function span(className, text) {
    const node = document.createElement("span");
    node.className = className;
    node.textContent = text;
    return node;
  }

  function render(message) {
    const li = document.createElement("li");
    li.className = "chat-msg";
    li.dataset.id = message.id;
    li.dataset.to = message.to;
    const from = message.from || {};
    const isMine = mine.has(message.id) || (from.participant_id && from.participant_id === client.participantId);
    li.dataset.mine = String(!!isMine);

    const meta = document.createElement("div");
    meta.className = "chat-meta";
    meta.append(span("chat-name", String(from.name ?? "")));
    if (isMine) {
      const you = span("chat-you", "");
      setText(you, "chat.you");
      meta.append(you);
    }
    if (HOST_ROLES.has(from.role)) {
      const role = span("chat-role", "");
      setText(role, "chat.host_badge");
      meta.append(role);
    }
    const time = document.createElement("time");
    time.className = "chat-time";
    time.dateTime = String(message.sent_at ?? "");
    time.textContent = formatTime(message.sent_at);
    meta.append(time);
    if (message.to === "hosts") {
      const badge = span("chat-private", "");
      setText(badge, "chat.private_badge");
      meta.append(badge);
    }

    const text = document.createElement("p");
    text.className = "chat-text";
    text.textContent = String(message.text ?? "");
    li.append(meta, text);
    return li;
  }

  function scrollToEnd(force) {
    const list = ui.list;
    const nearEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    if (force || nearEnd) list.scrollTop = list.scrollHeight;
  }

  /** Show `message` once (the sender gets it in its ack and as an event), in id order. */
  function add(message, { live = false } = {}) {
    if (!message || typeof message.id !== "string" || shown.has(message.id)) return false;
    const li = render(message);
    shown.set(message.id, { message, li });
    // Usually the newest: append; an older one (history after live ones) goes in its place.
    let before = null;
    for (let node = ui.list.lastElementChild; node; node = node.previousElementSibling) {
      if (serial(node.dataset.id) < serial(message.id)) break;
      before = node;
    }
    ui.list.insertBefore(li, before);
    while (shown.size > MAX_SHOWN) {
      const first = ui.list.firstElementChild;
      shown.delete(first.dataset.id);
      first.remove();
    }
    ui.empty.hidden = shown.size > 0;
    if (live) scrollToEnd(li.dataset.mine === "true");
    return true;
  }

  function renderBadge() {
    ui.badge.hidden = unread === 0;
    ui.badge.textContent = unread > 99 ? "99+" : String(unread);
    const pressed = visible();
    ui.toggle.setAttribute("aria-pressed", String(pressed));
    if (unread) ui.toggle.setAttribute("aria-description", t("chat.unread", { count: unread }));
    else ui.toggle.removeAttribute("aria-description");
  }

  function markRead() {
    if (!visible()) return;
    unread = 0;
    renderBadge();
  }

  function open() {
    ui.panel.hidden = false;
    if (document.body.dataset.side !== "open") setSide(true);
    markRead();
    renderBadge();
    scrollToEnd(true);
    ui.text.focus();
  }

  function close() {
    ui.panel.hidden = true;
    renderBadge();
  }

  function chatError(err) {
    const code = err && typeof err.code === "string" ? err.code : "";
    if (code && has(`chat.error.${code}`)) return t(`chat.error.${code}`);
    return t("chat.error.failed", { message: errorText(err) });
  }

  async function loadHistory() {
    let result;
    try {
      result = await client.request("chat_history", {});
    } catch (err) {
      if (err && err.code !== "disconnected") toast(t("chat.history_failed"));
      return;
    }
    for (const message of result.messages || []) add(message);
    scrollToEnd(true);
  }

  function onMessage(message) {
    if (!add(message, { live: true })) return;
    const from = message.from || {};
    if (from.participant_id === client.participantId) return;
    if (!visible()) {
      unread += 1;
      renderBadge();
      // A word meant for the hosts only is easy to miss under a closed panel: say so.
      if (message.to === "hosts" && HOST_ROLES.has(client.role)) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "btn btn-small";
        button.textContent = t("chat.show");
        button.addEventListener("click", open);
        toast(t("chat.private_from", { name: String(from.name ?? "") }), { kind: "info", button });
      }
    }
  }

  async function onSubmit(event) {
    event.preventDefault();
    if (sending) return;
    const text = ui.text.value;
    if (!text.trim()) return;
    if (text.length > MAX_CHARS) {
      toast(t("chat.error.bad_request"));
      return;
    }
    sending = true;
    ui.send.disabled = true;
    try {
      const result = await client.request("chat", { text, to: ui.to.value === "hosts" ? "hosts" : "room" });
      mine.add(result.message.id);
      add(result.message, { live: true });
      ui.text.value = "";
    } catch (err) {
      toast(chatError(err));
    } finally {
      sending = false;
      ui.send.disabled = false;
      ui.text.focus();
    }
  }

  ui.form.addEventListener("submit", onSubmit);
  ui.text.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter starts a line; never while an input method (Telex, VNI) is
    // still composing a Vietnamese letter.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      ui.form.requestSubmit();
    }
  });
  ui.toggle.addEventListener("click", () => (visible() ? close() : open()));
  // The side bar also opens and closes from meeting.js (its own button, its close button).
  new MutationObserver(() => {
    markRead();
    renderBadge();
  }).observe(document.body, { attributes: true, attributeFilter: ["data-side"] });

  client.onServer("chat_message", onMessage);
  // After every (re)join: what was said before we came, or while the link was down.
  client.on("joined", () => loadHistory());
  onLangChange(() => {
    for (const { message, li } of shown.values()) {
      const time = li.querySelector(".chat-time");
      if (time) time.textContent = formatTime(message.sent_at);
    }
    renderBadge();
  });
  renderBadge();
}
