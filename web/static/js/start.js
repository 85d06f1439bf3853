// Giao Ban — start page: room name + display name, then go to /r/<room>?name=<name>.

import { t } from "./i18n.js";

const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
const NAME_KEY = "giaoban.name";

/**
 * Turn what a person typed into a valid room name when it is obvious how: Vietnamese letters
 * lose their diacritics ("Giao ban tỉnh" -> "Giao-ban-tinh"), spaces become "-".
 */
export function normaliseRoom(text) {
  return text
    .trim()
    .normalize("NFD")
    .replace(/[\u0300-\u036f]/g, "")
    .replace(/đ/g, "d")
    .replace(/Đ/g, "D")
    .replace(/\s+/g, "-")
    .replace(/-{2,}/g, "-");
}

const form = document.getElementById("start-form");
const roomInput = document.getElementById("room");
const nameInput = document.getElementById("name");
const errorBox = document.getElementById("start-error");

function showError(key) {
  errorBox.textContent = t(key);
  errorBox.setAttribute("data-i18n", key);
  errorBox.hidden = false;
}

if (nameInput && !nameInput.value) {
  try {
    nameInput.value = localStorage.getItem(NAME_KEY) || "";
  } catch {
    /* storage may be disabled */
  }
}

form?.addEventListener("submit", (event) => {
  event.preventDefault();
  errorBox.hidden = true;
  const room = normaliseRoom(roomInput.value);
  const name = nameInput.value.trim();
  if (!room) {
    showError("start.error_room_empty");
    roomInput.focus();
    return;
  }
  if (!ROOM_RE.test(room)) {
    showError("start.error_room_invalid");
    roomInput.focus();
    return;
  }
  if (!name) {
    showError("start.error_name_empty");
    nameInput.focus();
    return;
  }
  if ([...name].length > 64) {
    showError("start.error_name_long");
    nameInput.focus();
    return;
  }
  try {
    localStorage.setItem(NAME_KEY, name);
  } catch {
    /* storage may be disabled */
  }
  window.location.assign(`/r/${encodeURIComponent(room)}?name=${encodeURIComponent(name)}`);
});
