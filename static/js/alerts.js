// Friends going live, on every signed-in page: an in-app toast with a Listen link,
// the number of friends live now on the nav's Home link and in the tab title
// ("(2) Recordings · Hearth"), and, once the user opts in, a desktop notification.
//
// The count comes from /api/live on load (again after a reconnect, or when friends
// change) and is kept current by the "live" events every friend's pages get. Only a
// "live" event (someone going live now) alerts: sessions already live at load are
// counted, not announced. The user's own broadcasts are neither.
import { api } from "./api.js";
import { visit } from "./nav.js";
import { socket } from "./socket.js";
import { avatar, h, listenUrl, readJson } from "./ui.js";

const STORAGE_KEY = "hearth.desktopAlerts"; // "on" once the user opted in
const MAX_TOASTS = 3;

const me = readJson("current-user", {});
let shown = readJson("live-session", null); // the listen page's session: no toast for it
const els = {
  toasts: document.getElementById("toasts"),
  badge: document.getElementById("nav-live-count"),
  desktop: document.getElementById("desktop-alerts"),
};

const live = new Map(); // session id -> {id, userId, username, avatarUrl, title}
const toasts = new Map(); // session id -> toast element
const notifications = new Map(); // session id -> Notification

// On the go-live page a navigation would end the user's own broadcast: listen in a new tab.
const newTab = () => Boolean(document.getElementById("go-live"));

// --- Count: nav badge and tab title -----------------------------------------------

function renderCount() {
  const n = live.size;
  if (els.badge) {
    els.badge.hidden = n === 0;
    els.badge.dataset.count = String(n);
    els.badge.querySelector(".nav-count-number").textContent = String(n);
    els.badge.querySelector(".nav-count-text").textContent = `${n} ${n === 1 ? "friend" : "friends"} live`;
  }
  applyTitle();
}

let titleStatus = ""; // the live bar's "● Live", shown before the page's title
const appliedStatuses = new Set(); // every status shown so far, stripped before the next

/**
 * "(n) " before the page's own title while n friends are live, then the live bar's
 * status ("(2) ● Live · Home · Hearth"); pages may retitle themselves.
 */
function applyTitle() {
  let base = document.title.replace(/^\(\d+\) /, "");
  for (const prefix of appliedStatuses) if (base.startsWith(prefix)) base = base.slice(prefix.length);
  const status = titleStatus ? `${titleStatus} · ` : "";
  if (status) appliedStatuses.add(status);
  const want = `${live.size ? `(${live.size}) ` : ""}${status}${base}`;
  if (document.title !== want) document.title = want;
}

/** The live bar's status for the tab title ("" for none). */
export function setTitleStatus(text) {
  titleStatus = text;
  applyTitle();
}

const titleObserver = new MutationObserver(applyTitle);
function observeTitle() {
  titleObserver.disconnect();
  const titleEl = document.querySelector("title");
  if (titleEl) titleObserver.observe(titleEl, { childList: true, characterData: true, subtree: true });
}
observeTitle();
// In-app navigation (nav.js) brings a new <title> and maybe a listen page's session.
document.addEventListener("turbo:load", () => {
  shown = readJson("live-session", null);
  observeTitle();
  applyTitle();
});

// --- Toasts -----------------------------------------------------------------------

function showToast(session) {
  if (!els.toasts || session.id === shown?.id) return;
  removeToast(session.id);
  const opensTab = newTab();
  const toast = h(
    "div",
    { class: "toast", role: "group", "aria-label": `${session.username} is live`, dataset: { sessionId: session.id } },
    h("span", { class: "live-pip", "aria-hidden": "true" }),
    avatar({ username: session.username, avatar_url: session.avatarUrl }, "avatar-small"),
    h(
      "p",
      { class: "toast-text" },
      h("strong", {}, session.username),
      " is live",
      session.title ? h("span", { class: "toast-title" }, `: ${session.title}`) : null,
    ),
    h(
      "a",
      {
        class: "btn btn-primary btn-small toast-listen",
        href: listenUrl(session.id),
        target: opensTab ? "_blank" : null,
        rel: opensTab ? "noopener" : null,
        "aria-label": `Listen to ${session.username}${opensTab ? " (opens in a new tab)" : ""}`,
      },
      "Listen",
    ),
    h(
      "button",
      {
        type: "button",
        class: "btn btn-ghost btn-small toast-dismiss",
        "aria-label": `Dismiss the alert about ${session.username}`,
        onclick: () => removeToast(session.id),
      },
      "✕",
    ),
  );
  toasts.set(session.id, toast);
  els.toasts.append(toast);
  while (toasts.size > MAX_TOASTS) removeToast(toasts.keys().next().value);
}

function removeToast(id) {
  const toast = toasts.get(id);
  if (!toast) return;
  toasts.delete(id);
  const hadFocus = toast.contains(document.activeElement);
  toast.remove();
  if (hadFocus) {
    // Do not drop keyboard focus on <body>: go to the next alert, or the page's content.
    const next = [...toasts.values()].at(-1)?.querySelector(".toast-listen");
    (next ?? document.getElementById("main"))?.focus();
  }
}

/** A short message in the alerts region (e.g. why desktop alerts cannot be turned on). */
function showNote(text) {
  if (!els.toasts) return;
  const note = h(
    "div",
    { class: "toast toast-note", role: "group", "aria-label": "Note" },
    h("p", { class: "toast-text" }, text),
    h("button", { type: "button", class: "btn btn-ghost btn-small toast-dismiss", "aria-label": "Dismiss", onclick: () => close() }, "✕"),
  );
  const close = () => {
    const hadFocus = note.contains(document.activeElement);
    note.remove();
    if (hadFocus) els.desktop?.focus();
  };
  els.toasts.append(note);
  setTimeout(close, 10_000);
}

// --- Desktop notifications (opt-in) -----------------------------------------------

const canNotify = typeof Notification === "function";

function desktopOn() {
  return canNotify && localStorage.getItem(STORAGE_KEY) === "on" && Notification.permission === "granted";
}

function renderDesktopToggle() {
  if (!els.desktop) return;
  els.desktop.hidden = !canNotify;
  els.desktop.setAttribute("aria-pressed", String(desktopOn()));
}

async function toggleDesktop() {
  if (desktopOn()) {
    localStorage.removeItem(STORAGE_KEY);
  } else if (Notification.permission === "denied") {
    showNote("Your browser blocks notifications from Hearth: allow them in its site settings first.");
  } else {
    const permission = await Notification.requestPermission();
    if (permission === "granted") localStorage.setItem(STORAGE_KEY, "on");
    else showNote("Desktop alerts stay off: the browser did not get permission.");
  }
  renderDesktopToggle();
}

function notifyDesktop(session) {
  // A page the user is looking at has its toast; the tag keeps one notification
  // per broadcast however many Hearth tabs are open.
  if (!desktopOn() || document.hasFocus() || session.id === shown?.id) return;
  let notification;
  try {
    notification = new Notification(`${session.username} is live on Hearth`, {
      body: session.title || "Click to listen.",
      tag: `hearth-live-${session.id}`,
    });
  } catch {
    return; // e.g. Chrome on Android only notifies through a service worker
  }
  notification.addEventListener("click", () => {
    notification.close();
    window.focus();
    if (newTab()) window.open(listenUrl(session.id), "_blank", "noopener");
    else visit(listenUrl(session.id));
  });
  notifications.set(session.id, notification);
}

// --- State ------------------------------------------------------------------------

function forget(id) {
  live.delete(id);
  removeToast(id);
  notifications.get(id)?.close();
  notifications.delete(id);
}

let loadSeq = 0;
let missed = null; // "live" events that arrived while a load was on its way

async function load() {
  const seq = ++loadSeq;
  missed = [];
  try {
    const data = await api("/api/live");
    if (seq !== loadSeq) return;
    const ids = new Set(data.sessions.map((s) => s.id));
    for (const id of [...live.keys()]) if (!ids.has(id)) forget(id);
    for (const s of data.sessions) {
      live.set(s.id, {
        id: s.id,
        userId: s.broadcaster.id,
        username: s.broadcaster.display_name || s.broadcaster.username,
        avatarUrl: s.broadcaster.avatar_url ?? null,
        title: s.title ?? "",
      });
    }
    for (const msg of missed) apply(msg, { announce: false });
    renderCount();
  } catch {
    // the count stays as it was until the next event or reconnect
  } finally {
    if (seq === loadSeq) missed = null;
  }
}

/**
 * Apply a "live" event: the user's other sessions are over; a live one is counted
 * and, when `announce`, alerted (the event comes once, when a broadcast starts).
 * Replayed after a load (announce false), it must not take back its own toast.
 */
function apply(msg, { announce }) {
  for (const [id, s] of live) {
    if (s.userId === msg.user_id && !(msg.live && id === msg.session_id)) forget(id);
  }
  if (!msg.live) return;
  const session = {
    id: msg.session_id,
    userId: msg.user_id,
    username: msg.display_name || msg.username || "A friend",
    avatarUrl: msg.avatar_url ?? null,
    title: msg.title ?? "",
  };
  live.set(session.id, session);
  if (announce) {
    showToast(session);
    notifyDesktop(session);
  }
}

socket.on("live", (msg) => {
  if (msg.user_id === me?.id) return; // one's own broadcast is not "a friend live"
  missed?.push(msg);
  apply(msg, { announce: true });
  renderCount();
});
socket.on("friends.changed", () => load());
socket.onState((state, { reconnected }) => {
  if (reconnected) load();
});

els.desktop?.addEventListener("click", toggleDesktop);
window.addEventListener("storage", (event) => {
  if (event.key === STORAGE_KEY) renderDesktopToggle(); // opted in or out in another tab
});
renderDesktopToggle();
renderCount();
load();
