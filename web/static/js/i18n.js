// Giao Ban — user-facing strings in the browser.
//
// The page carries two JSON blocks rendered by the node: #i18n (the current language) and
// #i18n-alt (the other one), so the language can be switched without a reload (a reload would
// end a meeting). Elements are translated through attributes:
//   data-i18n="key"                       -> textContent
//   data-i18n-args='{"room": "x"}'        -> values for {room} in the string
//   data-i18n-attr="title:key;aria-label:key2"
//   data-i18n-alt="key"                   -> textContent in the *other* language

const COOKIE_MAX_AGE = 365 * 24 * 3600;

function readBlock(id) {
  const el = document.getElementById(id);
  if (!el) return { lang: null, strings: {} };
  try {
    return { lang: el.dataset.lang || null, strings: JSON.parse(el.textContent || "{}") };
  } catch (err) {
    console.error("i18n: bad JSON in #" + id, err);
    return { lang: el.dataset.lang || null, strings: {} };
  }
}

const current = readBlock("i18n");
const alternate = readBlock("i18n-alt");
const tables = {};
if (current.lang) tables[current.lang] = current.strings;
if (alternate.lang) tables[alternate.lang] = alternate.strings;

let lang = current.lang || document.documentElement.lang || "vi";
const listeners = new Set();

/** The current language code ("vi" or "en"). */
export function getLang() {
  return lang;
}

/** The language that the switch offers. */
export function otherLang() {
  return Object.keys(tables).find((code) => code !== lang) || (lang === "vi" ? "en" : "vi");
}

function format(text, args) {
  if (!args) return text;
  return text.replace(/\{(\w+)\}/g, (whole, name) =>
    Object.prototype.hasOwnProperty.call(args, name) ? String(args[name]) : whole,
  );
}

/** True when the current language has a string for `key`. */
export function has(key) {
  return Object.prototype.hasOwnProperty.call(tables[lang] || {}, key);
}

/** The string for `key` in the current language (Vietnamese as fallback), with {name} filled. */
export function t(key, args) {
  const table = tables[lang] || {};
  let text = table[key];
  if (text === undefined) text = (tables.vi || {})[key];
  if (text === undefined) {
    console.warn("i18n: no string for", key);
    text = key;
  }
  return format(text, args);
}

/** The string for `key` in the other language. */
export function tAlt(key, args) {
  const text = (tables[otherLang()] || {})[key];
  return text === undefined ? "" : format(text, args);
}

function argsOf(el) {
  const raw = el.getAttribute("data-i18n-args");
  if (!raw) return undefined;
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}

/** Translate one element from its data-i18n* attributes. */
export function translateElement(el) {
  const args = argsOf(el);
  const key = el.getAttribute("data-i18n");
  if (key) el.textContent = t(key, args);
  const altKey = el.getAttribute("data-i18n-alt");
  if (altKey) {
    el.textContent = tAlt(altKey, args);
    el.lang = otherLang();
  }
  const attrs = el.getAttribute("data-i18n-attr");
  if (attrs) {
    for (const pair of attrs.split(";")) {
      const [attr, attrKey] = pair.split(":").map((part) => part.trim());
      if (attr && attrKey) el.setAttribute(attr, t(attrKey, args));
    }
  }
}

/** Translate every element under `root` that carries data-i18n* attributes. */
export function applyI18n(root = document) {
  const selector = "[data-i18n], [data-i18n-attr], [data-i18n-alt]";
  if (root.matches && root.matches(selector)) translateElement(root);
  for (const el of root.querySelectorAll(selector)) translateElement(el);
}

/** Set `el`'s text to the string `key` and remember the key so a language switch updates it. */
export function setText(el, key, args) {
  el.setAttribute("data-i18n", key);
  if (args) el.setAttribute("data-i18n-args", JSON.stringify(args));
  else el.removeAttribute("data-i18n-args");
  el.textContent = t(key, args);
}

function updateSwitch() {
  const link = document.getElementById("lang-switch");
  if (!link) return;
  const other = otherLang();
  const url = new URL(window.location.href);
  url.searchParams.set("lang", other);
  link.href = url.pathname + url.search + url.hash;
  link.hreflang = other;
  link.lang = other;
}

/** Switch the page to `code` without reloading; remembers the choice in the `lang` cookie. */
export function setLang(code) {
  if (!tables[code] || code === lang) return;
  lang = code;
  document.documentElement.lang = code;
  document.cookie = `lang=${code}; path=/; max-age=${COOKIE_MAX_AGE}; samesite=lax`;
  const url = new URL(window.location.href);
  if (url.searchParams.has("lang")) {
    url.searchParams.delete("lang");
    window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
  }
  applyI18n(document);
  updateSwitch();
  for (const fn of listeners) {
    try {
      fn(code);
    } catch (err) {
      console.error(err);
    }
  }
}

/** Call `fn(lang)` after every language switch; returns a function that unsubscribes. */
export function onLangChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function init() {
  const link = document.getElementById("lang-switch");
  if (link && tables[otherLang()]) {
    link.addEventListener("click", (event) => {
      if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      setLang(otherLang());
    });
  }
  // A ?lang= in the address has done its work (the node set the cookie): drop it so that a
  // later reload or a copied link does not force the language again.
  const url = new URL(window.location.href);
  if (url.searchParams.has("lang")) {
    url.searchParams.delete("lang");
    window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
  }
  updateSwitch();
}

init();
