// Listen to (and watch) a friend's live session: a receive-only WebRTC connection to the server,
// signalled on the page's WebSocket. States: idle, connecting, live, reconnecting,
// ended, error. The hidden <audio> is only the sink: the page's own player has the
// one Listen / Stop button, a "Live" light that is on while audio plays, the time
// since the broadcast began and a volume slider. Opened from a Listen link
// (?autoplay=1) it starts at once; should the browser refuse to play without a
// click, "Click to play" is the one thing left to press. A broadcast with a camera also
// sends its video (faces and plates already blurred on the server): it plays in a muted
// <video> beside the audio sink, both tracks of one stream, so the browser keeps them in
// sync.
import { api, errorMessage } from "./api.js";
import { onPreempt } from "./playback.js";
import { pageSignal, pageSocket } from "./nav.js";
import { focusFirst, focusLost, focusable, readJson, setListeners, showMessage } from "./ui.js";
import { closePeer, createOfferSdp, createPeerConnection } from "./webrtc.js";

const socket = pageSocket(); // its subscriptions end when the page is left (nav.js)

const $ = (id) => document.getElementById(id);
const els = {
  section: $("listen"),
  status: $("listen-status"),
  error: $("listen-error"),
  audio: $("remote-audio"),
  video: $("remote-video"),
  start: $("listen-start"),
  play: $("listen-play"),
  stop: $("listen-stop"),
  ended: $("listen-ended"),
  elapsed: $("listen-elapsed"),
  listeners: $("listen-listeners"),
  liveLight: $("listen-live"),
  volume: $("listen-volume"),
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

const VOLUME_KEY = "hearth.volume";
const name = session.broadcaster.username;
const TITLES = { live: `Listening to ${name}`, ended: `${name} was live` };

let state = "idle";
let pc = null;
let attempt = 0;
let retries = 0; // automatic resumes since the last time audio flowed
const MAX_RETRIES = 5;

function setState(next, error = "") {
  const focused = document.activeElement;
  state = next;
  els.section.dataset.state = next;
  els.status.dataset.state = next;
  els.status.textContent = STATUS_TEXT[next] ?? next;
  showMessage(els.error, error);
  els.start.hidden = !(next === "idle" || next === "error");
  els.start.textContent = next === "error" ? "Try again" : "Listen";
  els.stop.hidden = !(next === "connecting" || next === "live" || next === "reconnecting");
  if (next !== "live") els.play.hidden = true;
  els.ended.hidden = next !== "ended";
  document.title = `${TITLES[next] ?? `${name} is live`} · Hearth`;
  if (next === "ended") {
    delete els.elapsed.dataset.elapsedSince;
    els.listeners.hidden = true; // nobody listens to an ended broadcast
    $("listen-title-state").textContent = "was live";
    document.body.classList.add("broadcast-ended");
  }
  renderLiveLight();
  passFocus(focused);
}

// Listen, Stop and "Click to play" hide themselves: one that held the focus hands it to
// the button now in its place, else to the status line ("Ended"), which hands it on.
function passFocus(focused) {
  const buttons = [els.start, els.stop, els.play];
  if (focused === els.status || (buttons.includes(focused) && !focusable(focused))) {
    focusFirst(els.stop, els.start, els.status);
  }
}

function hidePlay() {
  const focused = document.activeElement;
  els.play.hidden = true;
  passFocus(focused);
}

/** The player's "Live" light: on while the stream's audio is actually playing. */
function renderLiveLight() {
  els.liveLight.dataset.on = String(state === "live" && !els.audio.paused);
}

function teardown() {
  attempt += 1;
  closePeer(pc);
  pc = null;
  els.audio.pause();
  els.audio.srcObject = null;
  els.video.pause();
  els.video.srcObject = null;
  els.video.hidden = true;
}

function play() {
  const result = els.audio.play();
  result
    ?.then(hidePlay)
    .catch((error) => {
      if (error?.name === "AbortError") return; // superseded by a newer load
      if (state === "live" || state === "connecting") els.play.hidden = false;
    });
}

function onConnectionState(peer) {
  if (peer !== pc) return;
  if (peer.connectionState === "connected" && state === "connecting") {
    retries = 0;
    setState("live");
  } else if (peer.connectionState === "failed") {
    if (socket.isOpen) socket.send({ type: "listen.stop", session_id: session.id });
    reconnect();
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

/** The socket or the peer connection dropped while listening: resume by ourselves
 * while the broadcast is live, say clearly when it has ended. */
function reconnect() {
  teardown();
  if (retries >= MAX_RETRIES) {
    setState("error", "Lost the connection to the broadcast. Try again.");
    return;
  }
  setState("reconnecting");
  if (socket.isOpen) resume();
  // else: the socket's "open" state change calls resume()
}

async function resume() {
  const mine = attempt;
  retries += 1;
  await new Promise((ok) => setTimeout(ok, Math.min(500 * 2 ** (retries - 1), 4000)));
  if (mine !== attempt || state !== "reconnecting") return;
  const live = await stillLive();
  if (mine !== attempt || state !== "reconnecting") return;
  if (live === false) ended();
  else start();
}

function fail(message) {
  if (pc) socket.send({ type: "listen.stop", session_id: session.id });
  teardown();
  setState("error", message);
}

async function start() {
  if (state === "idle" || state === "error") retries = 0; // a click, not a resume
  teardown();
  const mine = attempt;
  setState("connecting");
  try {
    const peer = createPeerConnection();
    pc = peer;
    window.hearthListener = { pc: peer };
    peer.addEventListener("connectionstatechange", () => onConnectionState(peer));
    peer.addTransceiver("audio", { direction: "recvonly" });
    // The server answers "inactive" for video when the broadcast has no camera.
    peer.addTransceiver("video", { direction: "recvonly" });
    peer.addEventListener("track", (event) => {
      if (peer !== pc) return;
      if (event.track.kind === "video") {
        els.video.srcObject = new MediaStream([event.track]);
        return; // shown once the answer says the broadcast sends video
      }
      els.audio.srcObject = new MediaStream([event.track]);
      play();
    });
    const sdp = await createOfferSdp(peer);
    if (mine !== attempt) return;
    const reply = await socket.request({ type: "listen.start", session_id: session.id, sdp }, "listen.answer", {
      timeout: 20_000,
      match: (msg) => msg.session_id === session.id,
    });
    if (mine !== attempt) return;
    await peer.setRemoteDescription({ type: "answer", sdp: reply.sdp });
    if (mine !== attempt) return;
    if (reply.video && els.video.srcObject) {
      els.video.hidden = false;
      els.video.play()?.catch(() => {}); // muted: autoplay is allowed
    }
    if (peer.connectionState === "connected") setState("live");
  } catch (error) {
    if (mine !== attempt) return;
    if (["not_allowed", "not_live"].includes(error?.code) && (await stillLive()) === false) {
      ended(); // we missed its end (e.g. while offline): say so, not "not allowed"
      return;
    }
    if (["disconnected", "offline", "timeout", "owner_unreachable"].includes(error?.code)) {
      reconnect();
      return;
    }
    fail(`Couldn't start listening: ${errorMessage(error)}`);
  }
}

function stop() {
  if (pc) socket.send({ type: "listen.stop", session_id: session.id });
  teardown();
  setState("idle");
}

function ended() {
  if (state === "ended") return;
  teardown();
  setState("ended");
}

async function loadListeners() {
  try {
    const data = await api("/api/live");
    const mine = data.sessions.find((s) => s.id === session.id);
    if (mine && typeof mine.listeners === "number") setListeners(mine.listeners);
  } catch {
    // the count stays "–" until the next session.stats event
  }
}

// The broadcaster muted: say so, so silence does not look like a broken stream.
function showMuted(muted) {
  const badge = document.getElementById("listen-muted");
  if (badge) badge.hidden = !muted;
}

socket.on("session.stats", (msg) => {
  if (msg.session_id !== session.id) return;
  setListeners(msg.listeners);
  if (typeof msg.muted === "boolean") showMuted(msg.muted);
});
// Live captions (bleeped broadcasts): personal information arrives already masked.
const captionLines = [];
socket.on("session.caption", (msg) => {
  if (msg.session_id !== session.id) return;
  const row = document.getElementById("listen-captions-row");
  const box = document.getElementById("listen-captions");
  if (!row || !box) return;
  row.hidden = false;
  captionLines.push(String(msg.text || ""));
  while (captionLines.length > 2) captionLines.shift();
  box.textContent = captionLines.join(" ");
});
document.getElementById("listen-captions-on")?.addEventListener("change", (event) => {
  const box = document.getElementById("listen-captions");
  if (box) box.hidden = !event.target.checked;
});

socket.on("session.state", (msg) => {
  if (msg.session_id === session.id) showMuted(Boolean(msg.muted));
});
socket.on("session.ended", (msg) => {
  if (msg.session_id !== session.id) return;
  if (msg.reason === "unfriended") {
    teardown();
    setState("error", "You are no longer friends, so this broadcast is closed to you.");
  } else {
    ended();
  }
});
socket.on("live", (msg) => {
  // Not live any more, or live again in a new session: this one is over.
  if (msg.user_id === session.broadcaster.id && (!msg.live || msg.session_id !== session.id)) ended();
});

// The server drops a page's listening when its socket closes: resume once it is back.
// Events missed meanwhile (the broadcast's end) are caught up from /api/live.
socket.onState(async (connState, { reconnected }) => {
  if (connState !== "open" && (state === "live" || state === "connecting")) {
    reconnect();
  } else if (connState === "open" && state === "reconnecting") {
    resume();
  } else if (connState === "open" && reconnected && (state === "idle" || state === "error")) {
    if ((await stillLive()) === false) ended();
  }
});

els.start.addEventListener("click", start);
els.stop.addEventListener("click", stop);
els.play.addEventListener("click", play);
els.audio.addEventListener("playing", () => {
  hidePlay();
  renderLiveLight();
});
els.audio.addEventListener("pause", renderLiveLight);

// Volume: the slider drives the sink, remembered across pages and visits.
const savedVolume = Number(localStorage.getItem(VOLUME_KEY));
if (localStorage.getItem(VOLUME_KEY) !== null && savedVolume >= 0 && savedVolume <= 100) {
  els.volume.value = String(savedVolume);
}
function applyVolume() {
  els.audio.volume = Number(els.volume.value) / 100;
  els.volume.setAttribute("aria-valuetext", `${els.volume.value}%`);
}
els.volume.addEventListener("input", () => {
  applyVolume();
  localStorage.setItem(VOLUME_KEY, els.volume.value);
});
applyVolume();

// Another recording or stream started (here or in another tab): stop listening.
onPreempt(els.audio, () => {
  if (["connecting", "live", "reconnecting"].includes(state)) stop();
});
window.addEventListener("pagehide", () => {
  if (pc) socket.send({ type: "listen.stop", session_id: session.id });
});
// Another page of the app replaces this one (nav.js): its player goes with it.
pageSignal().addEventListener("abort", () => {
  if (pc) socket.send({ type: "listen.stop", session_id: session.id });
  teardown();
});

setState("idle");
loadListeners();
// Opened from a Listen link: start now, and drop the flag so that a reload or the
// back button does not start it again unasked.
if (new URLSearchParams(location.search).get("autoplay") === "1") {
  history.replaceState(history.state, "", location.pathname);
  start();
  // The Listen link that brought us here is gone with its page: focus the player's Stop.
  if (focusLost()) focusFirst(els.stop);
}
