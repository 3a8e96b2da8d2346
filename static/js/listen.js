// Listen to a friend's live session: a receive-only WebRTC connection to the server,
// signalled on the page's WebSocket. States: idle, connecting, live, ended, error.
import { api, errorMessage } from "./api.js";
import { socket } from "./socket.js";
import { readJson, setListeners, showMessage } from "./ui.js";
import { closePeer, createOfferSdp, createPeerConnection } from "./webrtc.js";

const $ = (id) => document.getElementById(id);
const els = {
  section: $("listen"),
  status: $("listen-status"),
  error: $("listen-error"),
  audio: $("remote-audio"),
  start: $("listen-start"),
  play: $("listen-play"),
  stop: $("listen-stop"),
  ended: $("listen-ended"),
  elapsed: $("listen-elapsed"),
};

const session = readJson("live-session");
const STATUS_TEXT = {
  idle: "Ready",
  connecting: "Connecting…",
  live: "Listening",
  ended: "Ended",
  error: "Error",
};

let state = "idle";
let pc = null;
let attempt = 0;

function setState(next, error = "") {
  state = next;
  els.section.dataset.state = next;
  els.status.dataset.state = next;
  els.status.textContent = STATUS_TEXT[next] ?? next;
  showMessage(els.error, error);
  els.start.hidden = !(next === "idle" || next === "error");
  els.start.textContent = next === "error" ? "Try again" : "Listen";
  els.stop.hidden = !(next === "connecting" || next === "live");
  if (next !== "live") els.play.hidden = true;
  els.ended.hidden = next !== "ended";
  if (next === "ended") {
    delete els.elapsed.dataset.elapsedSince;
    $("listen-title-state").textContent = "was live";
    document.body.classList.add("broadcast-ended");
  }
}

function teardown() {
  attempt += 1;
  closePeer(pc);
  pc = null;
  els.audio.pause();
  els.audio.srcObject = null;
}

function play() {
  const result = els.audio.play();
  result
    ?.then(() => {
      els.play.hidden = true;
    })
    .catch((error) => {
      if (error?.name === "AbortError") return; // superseded by a newer load
      if (state === "live" || state === "connecting") els.play.hidden = false;
    });
}

function onConnectionState(peer) {
  if (peer !== pc) return;
  if (peer.connectionState === "connected" && state === "connecting") setState("live");
  else if (peer.connectionState === "failed") fail("The audio connection failed.");
}

function fail(message) {
  if (pc) socket.send({ type: "listen.stop", session_id: session.id });
  teardown();
  setState("error", message);
}

async function start() {
  teardown();
  const mine = attempt;
  setState("connecting");
  try {
    const peer = createPeerConnection();
    pc = peer;
    window.hearthListener = { pc: peer };
    peer.addEventListener("connectionstatechange", () => onConnectionState(peer));
    peer.addTransceiver("audio", { direction: "recvonly" });
    peer.addEventListener("track", (event) => {
      if (peer !== pc) return;
      els.audio.srcObject = event.streams[0] || new MediaStream([event.track]);
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
    if (mine === attempt && peer.connectionState === "connected") setState("live");
  } catch (error) {
    if (mine !== attempt) return;
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

socket.on("session.stats", (msg) => {
  if (msg.session_id === session.id) setListeners(msg.listeners);
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

// The server drops a page's listening when its socket closes.
socket.onState((connState) => {
  if (connState !== "open" && (state === "live" || state === "connecting")) {
    teardown();
    setState("error", "Lost the connection to the server.");
  }
});

els.start.addEventListener("click", start);
els.stop.addEventListener("click", stop);
els.play.addEventListener("click", play);
els.audio.addEventListener("playing", () => {
  els.play.hidden = true;
});
window.addEventListener("pagehide", () => {
  if (pc) socket.send({ type: "listen.stop", session_id: session.id });
});

setState("idle");
loadListeners();
