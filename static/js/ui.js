// Small DOM and formatting helpers shared by the pages.

/**
 * Create an element: h("li", {class: "x", dataset: {id: 1}, onclick: fn}, "text", child).
 * Strings become text nodes (never HTML), null/false children are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Read a {{ value|json_script:id }} block; `fallback` when it is missing or invalid. */
export function readJson(id, fallback = null) {
  const el = document.getElementById(id);
  if (!el) return fallback;
  try {
    return JSON.parse(el.textContent);
  } catch {
    return fallback;
  }
}

/** 75 -> "1:15", 3725 -> "1:02:05". */
export function formatDuration(totalSeconds) {
  const s = Math.max(0, Math.floor(Number(totalSeconds) || 0));
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const seconds = String(s % 60).padStart(2, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${seconds}` : `${minutes}:${seconds}`;
}

/** Seconds since an ISO 8601 timestamp (or Date / epoch ms). */
export function secondsSince(when) {
  const t = when instanceof Date ? when.getTime() : new Date(when).getTime();
  return Number.isNaN(t) ? 0 : (Date.now() - t) / 1000;
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** A readable local date and time for an ISO 8601 timestamp. */
export function formatDate(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : dateFormat.format(date);
}

/** "1 listener", "3 listeners". */
export function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

/** Show a listener count in #listener-count, and "listener(s)" to match in #listener-label. */
export function setListeners(count) {
  const countEl = document.getElementById("listener-count");
  const labelEl = document.getElementById("listener-label");
  if (countEl) countEl.textContent = String(count);
  if (labelEl) labelEl.textContent = plural(count, "listener").replace(/^\S+ /, "");
}

/** Show `message` in `el` (unhidden), or hide it when message is empty. */
export function showMessage(el, message) {
  if (!el) return;
  el.textContent = message || "";
  el.hidden = !message;
}

// Every element with data-elapsed-since="ISO" shows the time since then, ticking each second.
function tick() {
  for (const el of document.querySelectorAll("[data-elapsed-since]")) {
    el.textContent = formatDuration(secondsSince(el.dataset.elapsedSince));
  }
}
tick();
setInterval(tick, 1000);

/** Refresh [data-elapsed-since] elements now (after adding some). */
export const refreshElapsed = tick;

/**
 * The listen page of live session `id`, asked to start playing at once: links the
 * user clicks (dashboard, alerts) use it, so one click is all it takes to listen.
 */
export function listenUrl(id) {
  return `/listen/${encodeURIComponent(id)}/?autoplay=1`;
}

/** The name to show for a user {username, display_name}: the display name when set. */
export function shownName(user) {
  return user?.display_name || user?.username || "";
}

/**
 * A user's name for a list row: the display name, then the username in muted text when
 * they differ; the whole username is in the title (long names are cut on screen).
 */
export function nameParts(user, className = "") {
  const shown = shownName(user);
  return [
    h("strong", { class: className || null, title: user.username }, shown),
    shown !== user.username ? h("span", { class: "row-meta handle" }, `@${user.username}`) : null,
  ];
}

/** Whether `el` can hold the keyboard focus now: in the document, rendered, enabled. */
export function focusable(el) {
  return Boolean(el?.isConnected && !el.disabled && el.getClientRects().length > 0);
}

/**
 * Whether the keyboard focus is lost: on the body (its element was removed), or on an
 * element that was hidden or disabled under it (e.g. a button that replaced itself).
 */
export function focusLost() {
  const active = document.activeElement;
  return !active || active === document.body || !focusable(active);
}

/**
 * Move the keyboard focus to the first of `candidates` (elements, null skipped) that
 * can hold it (see focusable); one that is not focusable by nature (a status line, a
 * list's "none yet" text) gets tabindex="-1" first. Returns the element, or null.
 */
export function focusFirst(...candidates) {
  const target = candidates.flat().find(focusable);
  if (!target) return null;
  if (target.tabIndex < 0 && !target.hasAttribute("tabindex")) target.setAttribute("tabindex", "-1");
  target.focus();
  return target;
}

/**
 * Up to two capital letters standing for a name where there is no picture:
 * "Alice Liddell" -> "AL", "bob_smith" -> "BS", "carol" -> "C". Mirrors initials()
 * in frontend/views.py.
 */
export function initials(name) {
  const words = String(name || "").split(/[\s_.\-@+]+/u).filter(Boolean);
  return words.slice(0, 2).map((word) => [...word][0]).join("").toUpperCase() || "?";
}

// The letters are CSS generated content (data-initials): decorative, and kept out of
// the row's text (a row reads "bob", not "Bbob").
function initialsEl(user, className) {
  return h("span", {
    class: `${className} avatar-initials`,
    "aria-hidden": "true",
    "data-initials": initials(shownName(user)),
  });
}

/**
 * A user's picture for a row {username, display_name, avatar_url}: their avatar, or
 * their initials when they have none or it is not theirs to see (the API gives
 * avatar_url for friends only), or when it fails to load. It always stands beside
 * the user's name, so it is decorative: the image has an empty alt text and the
 * initials are hidden from screen readers (the name is not read twice).
 */
export function avatar(user, extraClass = "") {
  const className = extraClass ? `avatar ${extraClass}` : "avatar";
  if (!user?.avatar_url) return initialsEl(user, className);
  return h("img", {
    class: className,
    src: user.avatar_url,
    alt: "",
    width: 256,
    height: 256,
    loading: "lazy",
    decoding: "async",
    onerror: (event) => event.currentTarget.replaceWith(initialsEl(user, className)),
  });
}
