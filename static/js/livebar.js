// The live bar (like a voice-chat bar): on every page while this tab is live —
// "You're live · 3 listening · Mute · Stop" — also in the tab title ("● Live · …"),
// and "You're live in another tab" when another tab of the user broadcasts. The bar
// is a data-turbo-permanent element, so in-app navigation keeps it (nav.js).
//
// golive.js owns the broadcast (peer connection, microphone) and reports it here with
// setBroadcast({state, sessionId, listeners, muted, reconnecting, stop, toggleMute,
// goLiveAgain}); the bar's buttons call those. Leaving the site while live asks first.
import { setTitleStatus } from "./alerts.js";
import { visit } from "./nav.js";
import { socket } from "./socket.js";
import { focusFirst, focusable, readJson } from "./ui.js";

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
  const text = $("livebar-text");
  const mute = $("livebar-mute");
  const stop = $("livebar-stop");
  const again = $("livebar-again");
  const open = $("livebar-open");
  const focused = document.activeElement;
  let status = "";
  let title = "";
  mute.hidden = stop.hidden = again.hidden = open.hidden = true;
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
  bar.hidden = !status;
  // A bar button that hid itself (Stop) hands the focus on: to the bar's text while it
  // shows, then to the go-live page's button or the page.
  if (bar.contains(focused) && !focusable(focused)) {
    focusFirst(stop, mute, again, text, $("go-live-start"), $("main"));
  }
  setTitleStatus(title);
}

// The bar's buttons (the bar is permanent: bound once).
$("livebar-mute")?.addEventListener("click", () => broadcast?.toggleMute?.());
$("livebar-stop")?.addEventListener("click", () => broadcast?.stop?.());
$("livebar-open")?.addEventListener("click", () => visit($("livebar-open").dataset.href));
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
