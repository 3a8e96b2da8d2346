// The live bar (like a voice-chat bar): on every page while this tab is live —
// "You're live · 3 listening · Mute · Stop" — also in the tab title ("● Live · …"),
// and "You're live in another tab" when another tab of the user broadcasts; and while
// it listens — "Listening to alice · live for 3:12 · volume · Leave", in the tab title
// too ("♪ Listening to alice · …"), then "alice's broadcast has ended — replay it". The bar is a
// data-turbo-permanent element, so in-app navigation keeps it (nav.js), and with it
// the listen's <audio> (listening.js owns the listen).
//
// golive.js owns the broadcast (peer connection, microphone) and reports it here with
// setBroadcast({state, sessionId, listeners, muted, reconnecting, stop, toggleMute,
// goLiveAgain}); the bar's buttons call those. Leaving the site while live asks first.
import { setTitleStatus } from "./alerts.js";
import { ACTIVE, dismiss, getVolume, leave, listening, onListening, play, retry, setVolume } from "./listening.js";
import { visit } from "./nav.js";
import { socket } from "./socket.js";
import { focusFirst, focusable, h, readJson, refreshElapsed, shownName } from "./ui.js";

const me = readJson("current-user", {});
const LIVE_STATES = new Set(["connecting", "live", "stopping"]);

let broadcast = null; // this tab's broadcast, from golive.js
let elsewhere = null; // {id}: the user's live session held by another tab
let serverId = null; // the server instance of the first hello (a change = restart)
let restarted = false; // the server restarted under this tab's broadcast

const $ = (id) => document.getElementById(id);

/** golive.js: this tab's broadcast changed (null: none). */
export function setBroadcast(info) {
  broadcast = info;
  if (info && LIVE_STATES.has(info.state)) {
    restarted = false;
    elsewhere = null;
  }
  if (info?.restarted) restarted = true;
  render();
}

/** Whether this tab is broadcasting (or about to): leaving would end it. */
export function broadcasting() {
  return Boolean(broadcast && LIVE_STATES.has(broadcast.state));
}

function render() {
  const bar = $("livebar");
  if (!bar) return;
  const broadcastTitle = renderBroadcast(bar);
  const listenTitle = renderListen();
  bar.hidden = $("livebar-broadcast").hidden && $("livebar-listen").hidden;
  setTitleStatus(broadcastTitle || listenTitle);
}

/** The broadcast's row; returns its tab-title status ("" for none). */
function renderBroadcast(bar) {
  const focused = document.activeElement;
  const text = $("livebar-text");
  const mute = $("livebar-mute");
  const stop = $("livebar-stop");
  const again = $("livebar-again");
  const open = $("livebar-open");
  let status = "";
  let title = "";
  mute.hidden = stop.hidden = again.hidden = open.hidden = true;
  bar.dataset.state = "idle";
  if (broadcasting()) {
    const n = broadcast.listeners ?? 0;
    if (broadcast.state === "connecting") status = "Going live…";
    else if (broadcast.state === "stopping") status = "Ending your broadcast…";
    else if (broadcast.reconnecting) status = "You're live · reconnecting to the server…";
    else status = `You're live · ${n} listening${broadcast.muted ? " · muted" : ""}`;
    title = broadcast.muted ? "● Live (muted)" : "● Live";
    bar.dataset.state = broadcast.reconnecting ? "reconnecting" : broadcast.state;
    mute.hidden = broadcast.state !== "live";
    mute.textContent = broadcast.muted ? "Unmute" : "Mute";
    mute.setAttribute("aria-pressed", String(Boolean(broadcast.muted)));
    stop.hidden = broadcast.state === "stopping";
    open.hidden = Boolean($("go-live"));
  } else if (restarted) {
    status = "The server restarted, so your broadcast ended.";
    bar.dataset.state = "restarted";
    again.hidden = false;
  } else if (elsewhere) {
    status = "You're live in another tab.";
    title = "● Live";
    bar.dataset.state = "elsewhere";
  }
  text.textContent = status;
  $("livebar-broadcast").hidden = !status;
  // A bar button that hid itself (Stop) hands the focus on: to the bar's text while it
  // shows, then to the go-live page's button or the page.
  if (bar.contains(focused) && !focusable(focused)) {
    focusFirst(stop, mute, again, text, $("go-live-start"), $("main"));
  }
  return title;
}

/** The listen's row (hidden on the listen page of the same session, which is its full
 * player); returns its tab-title status ("" for none). */
function renderListen() {
  const row = $("livebar-listen");
  const l = listening();
  const page = readJson("live-session", null);
  const onItsPage = Boolean(l && page?.id === l.session.id && $("listen"));
  row.hidden = !l || onItsPage;
  row.dataset.state = l?.state ?? "idle";
  if (!l) return "";
  const name = shownName(l.session.broadcaster);
  const active = ACTIVE.has(l.state);
  const text = $("livebar-listen-text");
  // A live region: rewrite it only when what it says changes (not on every render).
  const said = JSON.stringify([l.state, name, l.muted, l.recordingId ?? "", l.error]);
  if (text.dataset.said !== said) {
    text.dataset.said = said;
    text.replaceChildren(...listenWords(l, name));
  }
  $("livebar-live").dataset.on = String(l.playing);
  $("livebar-live").hidden = !active;
  const elapsed = $("livebar-elapsed");
  $("livebar-time").hidden = !active;
  if (active && elapsed.dataset.elapsedSince !== l.session.started_at) {
    elapsed.dataset.elapsedSince = l.session.started_at;
    elapsed.setAttribute("datetime", l.session.started_at);
    refreshElapsed();
  } else if (!active) delete elapsed.dataset.elapsedSince;
  $("livebar-volume-group").hidden = !active;
  const volume = $("livebar-volume");
  if (volume.value !== String(getVolume())) volume.value = String(getVolume());
  volume.setAttribute("aria-valuetext", `${getVolume()}%`);
  $("livebar-play").hidden = !(active && l.needsClick);
  $("livebar-leave").hidden = !active;
  $("livebar-leave").setAttribute("aria-label", `Leave ${name}'s broadcast`);
  $("livebar-retry").hidden = l.state !== "error";
  $("livebar-close").hidden = active;
  return active && !onItsPage ? `♪ Listening to ${name}` : "";
}

/** What the listen's row says: text and, once ended with a recording, its link. */
function listenWords(l, name) {
  if (l.state === "connecting") return [`Connecting to ${name}…`];
  if (l.state === "reconnecting") return [`Reconnecting to ${name}…`];
  if (l.state === "live") return [`Listening to ${name}${l.muted ? " · muted by the broadcaster" : ""}`];
  if (l.state !== "ended") return [`${name}: ${l.error || "the listen failed."}`];
  if (typeof l.recordingId !== "number") return [`${name}'s broadcast has ended.`];
  const link = h("a", { href: `/recordings/${l.recordingId}/`, id: "livebar-replay" }, "replay it");
  return [`${name}'s broadcast has ended — `, link];
}

/** After the listen's row went away under the keyboard focus: a Listen link to the
 * same broadcast when the page has one, else the page's content. */
function focusAfterListen(sessionId) {
  const link = [...document.querySelectorAll("a.listen-link")].find(
    (a) => new URL(a.href, location.href).pathname === `/listen/${sessionId}/`,
  );
  (link ?? $("main"))?.focus();
}

// The bar's buttons (the bar is permanent: bound once).
$("livebar-mute")?.addEventListener("click", () => broadcast?.toggleMute?.());
$("livebar-stop")?.addEventListener("click", () => broadcast?.stop?.());
$("livebar-open")?.addEventListener("click", () => visit($("livebar-open").dataset.href));
$("livebar-leave")?.addEventListener("click", () => {
  const id = listening()?.session.id;
  leave();
  focusAfterListen(id);
});
$("livebar-close")?.addEventListener("click", () => {
  const id = listening()?.session.id;
  dismiss();
  focusAfterListen(id);
});
$("livebar-retry")?.addEventListener("click", () => {
  retry();
  $("livebar-leave")?.focus();
});
$("livebar-play")?.addEventListener("click", play);
$("livebar-volume")?.addEventListener("input", (event) => setVolume(event.target.value));
onListening(render);
$("livebar-again")?.addEventListener("click", () => {
  restarted = false;
  render();
  if (broadcast?.goLiveAgain) broadcast.goLiveAgain();
  else visit($("livebar-open").dataset.href);
});

// The user's own broadcasts in other tabs (this tab's own session is golive.js's).
socket.on("hello", (msg) => {
  if (serverId && msg.server && msg.server !== serverId && broadcasting()) restarted = true;
  serverId = msg.server ?? serverId;
  const own = msg.live;
  elsewhere = own && own.id !== broadcast?.sessionId ? { id: own.id } : null;
  render();
});
socket.on("live", (msg) => {
  if (msg.user_id !== me?.id) return;
  if (msg.live && msg.session_id !== broadcast?.sessionId) elsewhere = { id: msg.session_id };
  else if (!msg.live && elsewhere?.id === msg.session_id) elsewhere = null;
  render();
});

// Closing the tab or leaving the site (not an in-app link) ends the broadcast: ask.
window.addEventListener("beforeunload", (event) => {
  if (!broadcasting()) return;
  event.preventDefault();
  event.returnValue = ""; // older browsers need it set
});
// A new page's title (nav.js swaps pages): alerts.js re-applies the status.
document.addEventListener("turbo:load", render);
render();
