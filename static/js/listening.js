// This tab's one live listen: a receive-only WebRTC connection to the server for a
// friend's live session, signalled on the shared socket, played through the live bar's
// hidden <audio id="remote-audio">. The bar is a data-turbo-permanent element and this
// module is evaluated once per document (app.js, through livebar.js), so a listen
// survives in-app navigation (nav.js) just as a broadcast does (golive.js).
//
// States: connecting, live, reconnecting, ended, error (no listen: listening() is null).
// The live bar (livebar.js) and the listen page (listen.js) show it and call
// listenTo() / leave() / dismiss() / retry() / play() / setVolume(); they follow it
// with onListening(fn). A socket or peer connection drop resumes by itself while the
// broadcast is live; its end says whether a recording was kept (recordingId).
import { api, errorMessage } from "./api.js";
import { onPreempt } from "./playback.js";
import { socket } from "./socket.js";
import { closePeer, createOfferSdp, createPeerConnection } from "./webrtc.js";

/** States in which the tab holds (or is getting back) a connection to the broadcast. */
export const ACTIVE = new Set(["connecting", "live", "reconnecting"]);

const VOLUME_KEY = "hearth.volume"; // 0..100, remembered across pages and visits
const MAX_RETRIES = 5; // automatic resumes since audio last flowed
const RECORDING_LOOKUP_MS = 2_000; // wait this long for session.ended before asking the API

const audio = document.getElementById("remote-audio");
const watchers = new Set();

// current: {session, state, error, muted, recordingId, needsClick} or null.
// session is live_session_json's shape: {id, broadcaster: {id, username, display_name},
// started_at}; recordingId: undefined (not known yet), null (none kept) or a number.
let current = null;
let pc = null;
let video = null; // MediaStream of the broadcaster's camera, once the answer says it is sent
let attempt = 0; // bumps on every (re)start and stop so stale async steps give up
let retries = 0;

let volume = 100;
const saved = localStorage.getItem(VOLUME_KEY);
if (saved !== null && Number(saved) >= 0 && Number(saved) <= 100) volume = Number(saved);
if (audio) audio.volume = volume / 100;

/** This tab's listen, as a snapshot ({session, state, error, muted, recordingId,
 * needsClick, playing}), or null when it listens to nothing. */
export function listening() {
  if (!current) return null;
  return { ...current, playing: Boolean(audio && !audio.paused && current.state === "live") };
}

/** The broadcaster's camera (a MediaStream, redacted on the server) while this tab
 * listens to a broadcast that sends one, else null. */
export function listeningVideo() {
  return current && ACTIVE.has(current.state) ? video : null;
}

/** Call fn(listening()) on every change; returns the function that unsubscribes. */
export function onListening(fn) {
  watchers.add(fn);
  return () => watchers.delete(fn);
}

function emit() {
  const snapshot = listening();
  for (const fn of [...watchers]) {
    try {
      fn(snapshot);
    } catch (error) {
      console.warn("Hearth: listening watcher failed:", error);
    }
  }
}

function update(changes) {
  if (!current) return;
  Object.assign(current, changes);
  emit();
}

/** The volume, 0..100. */
export function getVolume() {
  return volume;
}

/** Set the volume (0..100), remembered for the next pages and visits. */
export function setVolume(value) {
  const v = Math.min(100, Math.max(0, Math.round(Number(value) || 0)));
  volume = v;
  if (audio) audio.volume = v / 100;
  localStorage.setItem(VOLUME_KEY, String(v));
  emit();
}

function teardown() {
  attempt += 1;
  closePeer(pc);
  pc = null;
  video = null;
  if (audio) {
    audio.pause();
    audio.srcObject = null;
  }
}

function sendStop() {
  if (pc && current && socket.isOpen) socket.send({ type: "listen.stop", session_id: current.session.id });
}

/** Play the sink; a browser that wants a click first leaves needsClick set. */
export function play() {
  const result = audio?.play();
  result
    ?.then(() => update({ needsClick: false }))
    .catch((error) => {
      if (error?.name === "AbortError") return; // superseded by a newer load
      if (current && (current.state === "live" || current.state === "connecting")) update({ needsClick: true });
    });
}

/** Listen to live session `session` (live_session_json's shape); a listen to another
 * session stops first. Listening to the session already playing does nothing. */
export function listenTo(session) {
  if (current?.session.id === session.id && ACTIVE.has(current.state)) return;
  if (current && ACTIVE.has(current.state)) {
    sendStop();
    teardown();
  }
  current = { session, state: "connecting", error: "", muted: false, recordingId: undefined, needsClick: false };
  retries = 0;
  start();
}

/** Try again after an error (a click: the automatic resumes count from zero). */
export function retry() {
  if (!current || ACTIVE.has(current.state)) return;
  retries = 0;
  start();
}

/** Stop listening and forget the listen. */
export function leave() {
  sendStop();
  teardown();
  current = null;
  emit();
}

/** Forget an ended or failed listen (the bar's close button). */
export function dismiss() {
  if (current && !ACTIVE.has(current.state)) {
    current = null;
    emit();
  }
}

async function start() {
  teardown();
  const mine = attempt;
  const { session } = current;
  update({ state: "connecting", error: "", needsClick: false });
  try {
    const peer = createPeerConnection();
    pc = peer;
    window.hearthListener = { pc: peer };
    peer.addEventListener("connectionstatechange", () => onConnectionState(peer));
    peer.addTransceiver("audio", { direction: "recvonly" });
    // The server answers "inactive" for video when the broadcast has no camera.
    peer.addTransceiver("video", { direction: "recvonly" });
    let camera = null;
    peer.addEventListener("track", (event) => {
      if (peer !== pc) return;
      if (event.track.kind === "video") {
        camera = new MediaStream([event.track]); // shown once the answer says it is sent
        return;
      }
      audio.srcObject = new MediaStream([event.track]);
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
    if (reply.video && camera) {
      video = camera;
      emit();
    }
    if (peer.connectionState === "connected") connected();
  } catch (error) {
    if (mine !== attempt) return;
    if (["not_allowed", "not_live"].includes(error?.code) && (await stillLive(session.id)) === false) {
      if (mine === attempt) ended(); // we missed its end (e.g. while offline)
      return;
    }
    if (mine !== attempt) return;
    if (["disconnected", "offline", "timeout", "owner_unreachable"].includes(error?.code)) {
      reconnect();
      return;
    }
    if (pc) sendStop();
    teardown();
    update({ state: "error", error: `Couldn't start listening: ${errorMessage(error)}` });
  }
}

function connected() {
  retries = 0;
  update({ state: "live" });
}

function onConnectionState(peer) {
  if (peer !== pc || !current) return;
  if (peer.connectionState === "connected" && current.state === "connecting") {
    connected();
  } else if (peer.connectionState === "failed") {
    sendStop();
    reconnect();
  }
}

/** Is live session `id` still live (and visible to us)? null when we cannot tell. */
async function stillLive(id) {
  try {
    const data = await api("/api/live");
    return data.sessions.some((s) => s.id === id);
  } catch {
    return null;
  }
}

/** The socket or the peer connection dropped: resume by ourselves while the
 * broadcast is live, say clearly when it has ended. */
function reconnect() {
  teardown();
  if (retries >= MAX_RETRIES) {
    update({ state: "error", error: "Lost the connection to the broadcast." });
    return;
  }
  update({ state: "reconnecting" });
  if (socket.isOpen) resume();
  // else: the socket's "open" state change calls resume()
}

async function resume() {
  const mine = attempt;
  retries += 1;
  await new Promise((ok) => setTimeout(ok, Math.min(500 * 2 ** (retries - 1), 4000)));
  if (mine !== attempt || current?.state !== "reconnecting") return;
  const live = await stillLive(current.session.id);
  if (mine !== attempt || current?.state !== "reconnecting") return;
  if (live === false) ended();
  else start();
}

/** The broadcast ended: drop the connection, keep the listen to say so. */
function ended(recordingId) {
  if (!current) return;
  const known = recordingId !== undefined ? recordingId : current.recordingId;
  if (current.state !== "ended") teardown();
  update({ state: "ended", error: "", needsClick: false, recordingId: known });
  if (known === undefined) lookUpRecording(current);
}

/** An end learnt without its session.ended (a "live" event, or missed while offline):
 * find the session's recording in the broadcaster's latest ones. */
async function lookUpRecording(listen) {
  await new Promise((ok) => setTimeout(ok, RECORDING_LOOKUP_MS));
  if (current !== listen || listen.recordingId !== undefined) return;
  try {
    const owner = encodeURIComponent(listen.session.broadcaster.id);
    const data = await api(`/api/recordings?owner=${owner}&limit=10`);
    const found = data.recordings.find((r) => r.session_id === listen.session.id);
    if (current === listen && listen.recordingId === undefined) update({ recordingId: found ? found.id : null });
  } catch {
    // not known: the bar says it ended, without a replay link
  }
}

socket.on("session.stats", (msg) => {
  if (current && msg.session_id === current.session.id && typeof msg.muted === "boolean" && msg.muted !== current.muted) {
    update({ muted: msg.muted });
  }
});
socket.on("session.state", (msg) => {
  if (current && msg.session_id === current.session.id) update({ muted: Boolean(msg.muted) });
});
socket.on("session.ended", (msg) => {
  if (!current || msg.session_id !== current.session.id) return;
  if (msg.reason === "unfriended") {
    teardown();
    update({ state: "error", error: "You are no longer friends, so this broadcast is closed to you." });
    return;
  }
  ended(typeof msg.recording_id === "number" ? msg.recording_id : null);
});
socket.on("live", (msg) => {
  // Not live any more, or live again in a new session: this one is over.
  if (!current || current.state === "ended" || msg.user_id !== current.session.broadcaster.id) return;
  if (!msg.live || msg.session_id !== current.session.id) ended();
});

// The server drops a socket's listening when it closes: resume once it is back.
// Events missed meanwhile (the broadcast's end) are caught up from /api/live.
socket.onState(async (connState, { reconnected }) => {
  if (!current) return;
  if (connState !== "open" && (current.state === "live" || current.state === "connecting")) {
    reconnect();
  } else if (connState === "open" && current.state === "reconnecting") {
    resume();
  } else if (connState === "open" && reconnected && current.state === "error") {
    const listen = current;
    if ((await stillLive(listen.session.id)) === false && current === listen) ended();
  }
});

if (audio) {
  audio.addEventListener("playing", () => update({ needsClick: false }));
  audio.addEventListener("pause", emit);
  // Another recording or stream started (here or in another tab): stop listening.
  onPreempt(audio, () => {
    if (current && ACTIVE.has(current.state)) leave();
  });
}
