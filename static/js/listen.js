// The listen page of a friend's live session: Hearth's own player (one Listen / Stop
// button, a "Live" light that is on while audio plays, the time since the broadcast
// began, a volume slider), the broadcaster's camera when there is one (faces and
// plates already blurred on the server), live captions and the listener count.
//
// The listen itself belongs to the document, not to this page (listening.js, played
// in the live bar), so it goes on when the user opens another page, and this page
// shows it again when they come back: no second connection, no second player. The
// page shows this tab's listen when it is of this page's session, and otherwise its
// own state: idle, or ended when the broadcast ends while the page is open.
// Opened from a Listen link (?autoplay=1) it starts at once; should the browser refuse
// to play without a click, "Click to play" is the one thing left to press.
import { api } from "./api.js";
import {
  ACTIVE,
  getVolume,
  leave,
  listenTo,
  listening,
  listeningVideo,
  onListening,
  play,
  retry,
  setVolume,
} from "./listening.js";
import { pageSignal, pageSocket } from "./nav.js";
import { focusFirst, focusLost, focusable, readJson, setListeners, showMessage, shownName } from "./ui.js";

const socket = pageSocket(); // its subscriptions end when the page is left (nav.js)

const $ = (id) => document.getElementById(id);
const els = {
  section: $("listen"),
  status: $("listen-status"),
  error: $("listen-error"),
  start: $("listen-start"),
  play: $("listen-play"),
  stop: $("listen-stop"),
  ended: $("listen-ended"),
  replay: $("listen-replay"),
  elapsed: $("listen-elapsed"),
  listeners: $("listen-listeners"),
  liveLight: $("listen-live"),
  volume: $("listen-volume"),
  video: $("remote-video"),
};

const session = readJson("live-session");
const STATUS_TEXT = {
  idle: "Ready",
  connecting: "Connecting…",
  live: "Listening",
  reconnecting: "Reconnecting…",
  ended: "Ended",
  error: "Error",
};

const name = shownName(session.broadcaster);
const TITLES = { live: `Listening to ${name}`, ended: `${name} was live` };

let pageEnded = false; // the broadcast ended while this page was open
const captionLines = []; // the last live captions shown (session.caption)

/** This tab's listen when it is of this page's session, else null. */
function mine() {
  const l = listening();
  return l && l.session.id === session.id ? l : null;
}

function render() {
  const focused = document.activeElement;
  const l = mine();
  if (l?.state === "ended") pageEnded = true;
  const state = pageEnded ? "ended" : (l?.state ?? "idle");
  els.section.dataset.state = state;
  els.status.dataset.state = state;
  els.status.textContent = STATUS_TEXT[state] ?? state;
  showMessage(els.error, state === "error" ? l?.error : "");
  els.start.hidden = !(state === "idle" || state === "error");
  els.start.textContent = state === "error" ? "Try again" : "Listen";
  els.stop.hidden = !ACTIVE.has(state);
  els.play.hidden = !(state === "live" || state === "connecting") || !l?.needsClick;
  els.ended.hidden = state !== "ended";
  els.liveLight.dataset.on = String(Boolean(state === "live" && l?.playing));
  const badge = $("listen-muted");
  if (badge && l) badge.hidden = !(ACTIVE.has(state) && l.muted);
  document.title = `${TITLES[state] ?? `${name} is live`} · Hearth`;
  if (state === "ended") {
    delete els.elapsed.dataset.elapsedSince;
    els.listeners.hidden = true; // nobody listens to an ended broadcast
    $("listen-title-state").textContent = "was live";
    // A bleeped broadcast that ended before any words were captioned: nothing to wait for.
    if (!captionLines.length) $("listen-captions-row")?.setAttribute("hidden", "");
    document.body.classList.add("broadcast-ended");
    if (els.replay && typeof l?.recordingId === "number") {
      els.replay.href = `/recordings/${l.recordingId}/`;
      els.replay.hidden = false;
    }
  }
  const volume = String(getVolume());
  if (els.volume.value !== volume) els.volume.value = volume;
  els.volume.setAttribute("aria-valuetext", `${volume}%`);
  renderVideo(state);
  passFocus(focused);
}

// A broadcast with a camera also sends its (server-redacted) picture: it plays here,
// muted, while the sound goes on through the live bar's audio sink.
function renderVideo(state) {
  const stream = ACTIVE.has(state) ? listeningVideo() : null;
  if (els.video.srcObject !== stream) els.video.srcObject = stream;
  els.video.hidden = !stream;
  if (stream && els.video.paused) els.video.play()?.catch(() => {}); // muted: autoplay is allowed
}

// Listen, Stop and "Click to play" hide themselves: one that held the focus hands it to
// the button now in its place, else to the status line ("Ended"), which hands it on.
function passFocus(focused) {
  const buttons = [els.start, els.stop, els.play];
  if (focused === els.status || (buttons.includes(focused) && !focusable(focused))) {
    focusFirst(els.stop, els.start, els.status);
  }
}

/** Is this page's session still live (and visible to us)? null when we cannot tell. */
async function stillLive() {
  try {
    const data = await api("/api/live");
    return data.sessions.some((s) => s.id === session.id);
  } catch {
    return null;
  }
}

function pageEnd() {
  if (pageEnded) return;
  pageEnded = true;
  render();
}

async function loadListeners() {
  try {
    const data = await api("/api/live");
    const found = data.sessions.find((s) => s.id === session.id);
    if (found && typeof found.listeners === "number") setListeners(found.listeners);
  } catch {
    // the count stays "–" until the next session.stats event
  }
}

// The broadcaster muted: say so, so silence does not look like a broken stream.
function showMuted(muted) {
  const badge = $("listen-muted");
  if (badge) badge.hidden = !muted;
}

socket.on("session.stats", (msg) => {
  if (msg.session_id !== session.id) return;
  setListeners(msg.listeners);
  if (typeof msg.muted === "boolean") showMuted(msg.muted);
});
socket.on("session.state", (msg) => {
  if (msg.session_id === session.id) showMuted(Boolean(msg.muted));
});
// Live captions (bleeped broadcasts): personal information arrives already masked. The
// page shows their row from the start for a bleeped broadcast ("Waiting for speech…").
socket.on("session.caption", (msg) => {
  if (msg.session_id !== session.id) return;
  const row = $("listen-captions-row");
  const box = $("listen-captions");
  if (!row || !box) return;
  row.hidden = false;
  box.classList.remove("captions-waiting"); // the page's "Waiting for speech…" is replaced
  captionLines.push(String(msg.text || ""));
  while (captionLines.length > 2) captionLines.shift();
  box.textContent = captionLines.join(" ");
});
$("listen-captions-on")?.addEventListener("change", (event) => {
  const box = $("listen-captions");
  if (box) box.hidden = !event.target.checked;
});

// The end of a broadcast this tab does not listen to (listening.js follows its own).
socket.on("session.ended", (msg) => {
  if (msg.session_id === session.id && !mine() && msg.reason !== "unfriended") pageEnd();
});
socket.on("live", (msg) => {
  // Not live any more, or live again in a new session: this one is over.
  if (msg.user_id === session.broadcaster.id && (!msg.live || msg.session_id !== session.id) && !mine()) pageEnd();
});
// Events missed while offline (the broadcast's end) are caught up from /api/live.
socket.onState(async (connState, { reconnected }) => {
  if (connState === "open" && reconnected && !mine() && (await stillLive()) === false) pageEnd();
});

// The control that replaces the pressed one gets the focus (not the page's body).
els.start.addEventListener("click", () => {
  if (mine()?.state === "error") retry();
  else listenTo(session);
  if (!els.stop.hidden) els.stop.focus();
});
els.stop.addEventListener("click", () => {
  leave();
  els.start.focus();
});
els.play.addEventListener("click", play);
els.volume.addEventListener("input", () => setVolume(els.volume.value));

const off = onListening(render);
pageSignal().addEventListener("abort", off, { once: true });

render();
loadListeners();
// Opened from a Listen link: start now (unless this tab listens to it already), and
// drop the flag so that a reload or the back button does not start it again unasked.
if (new URLSearchParams(location.search).get("autoplay") === "1") {
  history.replaceState(history.state, "", location.pathname);
  if (!mine() || !ACTIVE.has(mine().state)) listenTo(session);
  // The Listen link that brought us here is gone with its page: focus the player's Stop.
  if (focusLost()) focusFirst(els.stop);
}
