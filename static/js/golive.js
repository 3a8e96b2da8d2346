// "Go live": pick a microphone (and optionally a camera, previewed here), watch the
// level, and broadcast to the server over WebRTC (signalled on the page's WebSocket).
// The camera's faces and plates are blurred on the server (switches below), never here. States: idle, connecting, live, ended,
// error, and "elsewhere" (this user is live from another tab).
import { errorMessage } from "./api.js";
import { setBroadcast } from "./livebar.js";
import { socket } from "./socket.js";
import {
  avatar,
  focusFirst,
  focusable,
  formatDuration,
  h,
  readJson,
  secondsSince,
  setListeners,
  showMessage,
} from "./ui.js";
import { closePeer, createOfferSdp, createPeerConnection } from "./webrtc.js";

const $ = (id) => document.getElementById(id);
// The go-live page's elements. This module is evaluated once per document and owns the
// broadcast across in-app navigation (nav.js): bindPage() re-binds a new go-live page.
const els = {};
const page = () => ({
  section: $("go-live"),
  status: $("live-status"),
  message: $("live-message"),
  error: $("live-error"),
  elapsed: $("live-elapsed"),
  listeners: $("listener-count"),
  mic: $("mic-select"),
  micEnable: $("mic-enable"),
  micHelp: $("mic-help"),
  meter: $("mic-level"),
  meterBar: $("mic-level-bar"),
  cameraOn: $("camera-on"),
  cameraFields: $("camera-fields"),
  camera: $("camera-select"),
  preview: $("camera-preview"),
  blurFaces: $("blur-faces"),
  blurPlates: $("blur-plates"),
  blurText: $("blur-text"),
  videoStatus: $("video-status"),
  denoise: $("denoise"),
  title: $("live-title"),
  bleep: $("bleep"),
  bleepSound: $("bleep-sound"),
  bleepDelay: $("bleep-delay"),
  piiStatus: $("pii-status"),
  mute: $("live-mute"),
  listenersPanel: $("listeners-panel"),
  listenerNames: $("listener-names"),
  listenerNamesEmpty: $("listener-names-empty"),
  start: $("go-live-start"),
  stop: $("go-live-stop"),
  ended: $("live-ended"),
});
Object.assign(els, page());

const me = readJson("current-user", {});
const STATUS_TEXT = {
  idle: "Idle",
  connecting: "Connecting…",
  live: "Live",
  stopping: "Stopping…",
  ended: "Ended",
  error: "Error",
  elsewhere: "Live in another tab",
};
const END_REASONS = {
  disconnected: "The connection to the server was lost, so the broadcast ended.",
  server_shutdown: "The server restarted, so the broadcast ended.",
  lost: "The server lost track of this broadcast, so it ended. Your recording is saved.",
  worker_lost: "The media server holding this broadcast stopped, so it ended. Your recording is saved.",
  failed: "The server could not start the broadcast.",
  limit_duration: "The broadcast reached the maximum length, so it ended. Your recording is saved.",
  limit_quota: "Your recordings reached your storage quota, so the broadcast ended.",
  limit_disk: "The server ran low on disk space, so the broadcast ended. Your recording is saved.",
  limit_size: "The recording reached its maximum file size, so the broadcast ended.",
};

let state = "idle";
let pc = null;
let sender = null;
let stream = null;
let cameraStream = null; // the open camera, previewed; sent when "Camera" was on at start
let blurredWhole = 0; // frames the server blurred whole, as the last session.stats said
let sessionId = null;
let signalled = false; // broadcast.start was sent: the server may hold a session for us
let elsewhereSession = readJson("active-session");
let attempt = 0; // bumps on every start/stop so stale async steps give up
let limitWarning = ""; // the latest session.warning of this broadcast, kept while live
let muted = false; // as the server last confirmed (session.state)
let discardedNote = null; // why the stopping broadcast's recording was not kept
// Kept for the live bar and for a go-live page bound again after navigation:
let listenerCount = 0;
let shown = { message: "", error: "" }; // the status texts last shown
let liveSince = null; // ISO time the broadcast went live (its elapsed clock)
let resuming = false; // the socket dropped while live: re-attach when it is back
// The audio connection failed while live. aiortc cannot restart ICE, so a new peer
// connection sends the same microphone (and camera) track (broadcast.reconnect): the server keeps
// the broadcast MEDIA_RECONNECT_S for it, the gap recorded as silence.
let mediaLost = false;
let mediaPending = false; // a broadcast.reconnect is on its way
let mediaTries = 0; // reconnects since the audio last connected
let unstableTimer = 0;
const MEDIA_RECONNECT_TRIES = 3;
const UNSTABLE_MS = 5_000; // "disconnected" this long: reconnect without waiting for "failed"

// --- State and display -----------------------------------------------------------

function setState(next, { message = "", error = "" } = {}) {
  const focused = document.activeElement;
  if (next === "live" && state !== "live") liveSince = new Date().toISOString();
  if (next !== "live") resuming = mediaLost = false;
  shown = { message, error };
  state = next;
  els.section.dataset.state = next;
  els.status.dataset.state = next;
  els.status.textContent = STATUS_TEXT[next] ?? next;
  els.message.textContent = message;
  showMessage(els.error, error);

  const broadcasting = next === "connecting" || next === "live" || next === "stopping";
  els.start.hidden = broadcasting;
  els.start.disabled = next === "elsewhere"; // the server allows one live session per user
  els.start.textContent =
    next === "ended" || next === "error" ? "Start again" : "Start broadcast";
  els.stop.hidden = !(next === "connecting" || next === "live");
  els.stop.disabled = false;
  // Denoise can be switched while live (the server applies it), not mid-transition.
  els.denoise.disabled = next === "connecting" || next === "stopping";
  els.title.disabled = broadcasting;
  // Bleeping, the camera and its blur switches are chosen before going live (the
  // bleep controls are absent where the server turned bleeping off).
  for (const el of [els.bleep, els.bleepSound, els.bleepDelay]) if (el) el.disabled = broadcasting;
  els.cameraOn.disabled = broadcasting;
  els.blurFaces.disabled = broadcasting;
  els.blurPlates.disabled = broadcasting;
  els.blurText.disabled = broadcasting;
  if (!broadcasting) {
    if (els.piiStatus) showMessage(els.piiStatus, "");
    showMessage(els.videoStatus, "");
    blurredWhole = 0;
  }
  els.mute.hidden = next !== "live";
  els.listenersPanel.hidden = next !== "live";
  if (next !== "live") {
    muted = false;
    showMuted();
    showListenerNames([]);
  }
  els.ended.hidden = next !== "ended";

  if (next === "live") {
    els.elapsed.dataset.elapsedSince = liveSince;
  } else if (next === "elsewhere" && elsewhereSession) {
    els.elapsed.dataset.elapsedSince = elsewhereSession.started_at;
  } else {
    delete els.elapsed.dataset.elapsedSince;
    if (next === "connecting" || next === "idle") els.elapsed.textContent = formatDuration(0);
  }
  if (next === "connecting" || next === "idle") showListeners(0);
  if (next === "elsewhere") els.listeners.textContent = "–"; // counted by the other tab's page
  passFocus(focused);
  publish();
}

// Start, Stop and Mute hide themselves: one that held the focus hands it to the button
// now in its place (Start -> Stop -> Start again), or to the status line while there is
// none (stopping), which hands it on to the next button shown.
function passFocus(focused) {
  const buttons = [els.start, els.stop, els.mute];
  if (focused === els.status || (buttons.includes(focused) && !focusable(focused))) {
    focusFirst(els.stop, els.start, els.status);
  }
}

function showListeners(n) {
  listenerCount = n;
  if (els.section?.isConnected) setListeners(n);
  publish();
}

/** Tell the live bar (every page) how this tab's broadcast is. */
function publish(extra = {}) {
  setBroadcast({
    state,
    sessionId,
    listeners: listenerCount,
    muted,
    reconnecting: resuming || mediaLost,
    stop,
    toggleMute,
    goLiveAgain: () => {
      if (!$("go-live")) document.getElementById("livebar-open")?.click();
    },
    ...extra,
  });
}

function showElsewhere() {
  if (!elsewhereSession) return;
  setState("elsewhere", { message: "You're already live in another tab or window. Stop that broadcast to go live here." });
  els.elapsed.textContent = formatDuration(secondsSince(elsewhereSession.started_at));
}

// --- Microphone ------------------------------------------------------------------

function micErrorMessage(error) {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was blocked. Allow it in your browser's site settings and try again.";
    case "NotFoundError":
      return "No microphone was found. Plug one in and try again.";
    case "NotReadableError":
      return "The microphone could not be opened; another app may be using it.";
    case "OverconstrainedError":
      return "The selected microphone is not available. Choose another one.";
    default:
      return errorMessage(error);
  }
}

async function refreshDevices() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  let devices;
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    return;
  }
  const inputs = devices.filter((d) => d.kind === "audioinput" && d.deviceId && d.deviceId !== "default");
  const selected = els.mic.value;
  const fallback = devices.find((d) => d.kind === "audioinput" && d.deviceId === "default");
  const options = [new Option(fallback?.label || "Default microphone", "")];
  inputs.forEach((d, i) => options.push(new Option(d.label || `Microphone ${i + 1}`, d.deviceId)));
  els.mic.replaceChildren(...options);
  els.mic.value = inputs.some((d) => d.deviceId === selected) ? selected : "";
  const cameras = devices.filter((d) => d.kind === "videoinput" && d.deviceId);
  const chosen = els.camera.value;
  els.camera.replaceChildren(
    new Option("Default camera", ""),
    ...cameras.map((d, i) => new Option(d.label || `Camera ${i + 1}`, d.deviceId)),
  );
  els.camera.value = cameras.some((d) => d.deviceId === chosen) ? chosen : "";
}

// --- Camera ------------------------------------------------------------------------

function cameraErrorMessage(error) {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Camera access was blocked. Allow it in your browser's site settings and try again.";
    case "NotFoundError":
      return "No camera was found. Plug one in, or go live without the camera.";
    case "NotReadableError":
      return "The camera could not be opened; another app may be using it.";
    default:
      return errorMessage(error);
  }
}

/** Open the selected camera (replacing any open one) and show it in the preview. */
async function openCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("camera access needs a secure (HTTPS) connection and a modern browser.");
  }
  const deviceId = els.camera.value;
  const next = await navigator.mediaDevices.getUserMedia({
    video: {
      deviceId: deviceId ? { exact: deviceId } : undefined,
      // What the server redacts in real time: 640x480 at up to 15 fps.
      width: { ideal: 640 },
      height: { ideal: 480 },
      frameRate: { ideal: 15, max: 30 },
    },
  });
  const previous = cameraStream;
  cameraStream = next;
  const track = next.getVideoTracks()[0];
  const videoSender = pc?.getSenders().find((s) => s.track?.kind === "video");
  if (videoSender) await videoSender.replaceTrack(track);
  previous?.getTracks().forEach((t) => t.stop());
  els.preview.srcObject = next;
  await refreshDevices();
  return next;
}

function closeCamera() {
  cameraStream?.getTracks().forEach((t) => t.stop());
  cameraStream = null;
  if (els.preview) els.preview.srcObject = null;
}

async function cameraSwitched() {
  els.cameraFields.hidden = !els.cameraOn.checked;
  if (!els.cameraOn.checked) {
    closeCamera();
    return;
  }
  try {
    showMessage(els.error, "");
    await openCamera();
  } catch (error) {
    els.cameraOn.checked = false;
    els.cameraFields.hidden = true;
    showMessage(els.error, cameraErrorMessage(error));
  }
}

/** Open the selected microphone (replacing any open one) and start the level meter. */
async function openMic() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("microphone access needs a secure (HTTPS) connection and a modern browser.");
  }
  const deviceId = els.mic.value;
  const next = await navigator.mediaDevices.getUserMedia({
    audio: {
      deviceId: deviceId ? { exact: deviceId } : undefined,
      // The server denoises (DeepFilterNet3); the browser's own processing would fight it.
      noiseSuppression: false,
      echoCancellation: false,
      autoGainControl: true,
    },
  });
  const previous = stream;
  stream = next;
  const track = stream.getAudioTracks()[0];
  track.addEventListener("ended", () => {
    if (stream === next && (state === "live" || state === "connecting")) {
      showMessage(els.error, "The microphone was disconnected. Choose another one to keep broadcasting.");
    }
  });
  if (sender) await sender.replaceTrack(track);
  previous?.getTracks().forEach((t) => t.stop());
  startMeter(stream);
  els.micEnable.hidden = true;
  els.micHelp.textContent = "Speak to check the level before you go live.";
  await refreshDevices();
  return stream;
}

function closeMic() {
  stream?.getTracks().forEach((t) => t.stop());
  stream = null;
  stopMeter();
  els.micEnable.hidden = false;
}

// --- Level meter (WebAudio AnalyserNode on the local stream) -------------------------

let audioCtx = null;
let analyser = null;
let source = null;
let meterFrame = 0;
let level = 0;

function startMeter(mediaStream) {
  try {
    audioCtx ??= new AudioContext();
    audioCtx.resume().catch(() => {});
    analyser ??= Object.assign(audioCtx.createAnalyser(), { fftSize: 1024 });
    source?.disconnect();
    source = audioCtx.createMediaStreamSource(mediaStream);
    source.connect(analyser);
  } catch {
    return; // no WebAudio: the meter stays at zero, broadcasting still works
  }
  const samples = new Float32Array(analyser.fftSize);
  cancelAnimationFrame(meterFrame);
  const draw = () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    const db = 20 * Math.log10(Math.sqrt(sum / samples.length) || 1e-8);
    const target = Math.min(1, Math.max(0, (db + 60) / 60)); // -60 dBFS .. 0 dBFS
    level = target > level ? target : level * 0.9 + target * 0.1; // fast attack, slow release
    setMeter(level);
    meterFrame = requestAnimationFrame(draw);
  };
  draw();
}

function setMeter(value) {
  els.meter.value = value;
  els.meterBar.style.transform = `scaleX(${value})`;
  els.meterBar.dataset.level = value > 0.85 ? "high" : value > 0.6 ? "mid" : "low";
}

function stopMeter() {
  cancelAnimationFrame(meterFrame);
  source?.disconnect();
  source = null;
  level = 0;
  setMeter(0);
}

// --- Broadcasting ----------------------------------------------------------------

function teardownPeer() {
  closePeer(pc);
  pc = null;
  sender = null;
  sessionId = null;
  signalled = false;
}

function onConnectionState(peer) {
  if (peer !== pc) return;
  clearTimeout(unstableTimer);
  switch (peer.connectionState) {
    case "connected":
      if (state === "connecting") setState("live", { message: limitWarning });
      else if (state === "live") {
        mediaLost = false;
        mediaTries = 0;
        els.message.textContent = limitWarning;
        publish();
      }
      break;
    case "disconnected":
      if (state === "live") {
        els.message.textContent = "Connection unstable — trying to recover…";
        unstableTimer = setTimeout(() => {
          if (peer === pc && peer.connectionState === "disconnected") reconnectMedia();
        }, UNSTABLE_MS);
      }
      break;
    case "failed":
      if (state === "live") reconnectMedia();
      else fail("The audio connection to the server failed.");
      break;
    default:
      break;
  }
}

/** The audio connection failed while live: offer a new peer connection for the same
 * broadcast (the server swaps it in); the old one is closed once answered. */
async function reconnectMedia() {
  if (state !== "live" || sessionId === null) return;
  if (!mediaLost) mediaTries = 0;
  mediaLost = true;
  els.message.textContent = "The audio connection dropped — reconnecting… (you are still live)";
  publish();
  if (resuming || mediaPending || !socket.isOpen) return; // resume() calls again once back
  if (mediaTries >= MEDIA_RECONNECT_TRIES) {
    fail("The audio connection to the server failed and could not be restored.");
    return;
  }
  mediaTries += 1;
  mediaPending = true;
  const mine = attempt;
  const id = sessionId;
  let peer = null;
  try {
    const track = stream?.getAudioTracks()[0];
    if (!track || track.readyState !== "live") throw new Error("the microphone is closed.");
    peer = createPeerConnection();
    const next = peer;
    next.addEventListener("connectionstatechange", () => onConnectionState(next));
    const nextSender = next.addTransceiver(track, { direction: "sendonly", streams: [stream] }).sender;
    // A camera broadcast sends its camera again: the server swaps it into the same
    // redaction graph (listeners keep their connections).
    const camera = pc?.getSenders().find((s) => s.track?.kind === "video")?.track;
    if (camera?.readyState === "live") next.addTransceiver(camera, { direction: "sendonly", streams: [stream] });
    const sdp = await createOfferSdp(next);
    if (mine !== attempt) return;
    const reply = await socket.request({ type: "broadcast.reconnect", session_id: id, sdp }, "broadcast.reconnected", {
      timeout: 20_000,
      match: (msg) => msg.session_id === id,
    });
    if (mine !== attempt) return;
    const old = pc;
    pc = next;
    sender = nextSender;
    window.hearthBroadcaster = { pc: next };
    closePeer(old);
    await next.setRemoteDescription({ type: "answer", sdp: reply.sdp });
  } catch (error) {
    if (mine !== attempt) return;
    if (["timeout", "disconnected", "offline"].includes(error?.code)) {
      // The socket dropped (its return resumes, then reconnects) or the server was slow.
      if (socket.isOpen) setTimeout(() => mine === attempt && reconnectMedia(), 2_000);
      return;
    }
    fail(`The audio connection to the server failed: ${errorMessage(error)}`);
  } finally {
    mediaPending = false;
    if (peer && peer !== pc) closePeer(peer);
  }
}

function fail(message) {
  attempt += 1;
  if (signalled) socket.send({ type: "broadcast.stop" });
  teardownPeer();
  closeMic();
  closeCamera();
  setState("error", { error: message });
}

async function start() {
  const mine = ++attempt;
  limitWarning = "";
  setState("connecting", { message: "Opening the microphone…" });
  try {
    if (!stream || stream.getAudioTracks()[0]?.readyState !== "live") await openMic();
    if (mine !== attempt) return;
    els.message.textContent = "Connecting to the server…";
    const peer = createPeerConnection();
    pc = peer;
    window.hearthBroadcaster = { pc: peer };
    peer.addEventListener("connectionstatechange", () => onConnectionState(peer));
    sender = peer.addTransceiver(stream.getAudioTracks()[0], { direction: "sendonly", streams: [stream] }).sender;
    if (els.cameraOn.checked) {
      if (!cameraStream || cameraStream.getVideoTracks()[0]?.readyState !== "live") await openCamera();
      if (mine !== attempt) return;
      peer.addTransceiver(cameraStream.getVideoTracks()[0], { direction: "sendonly", streams: [stream] });
    }
    const sdp = await createOfferSdp(peer);
    if (mine !== attempt) return;
    signalled = true;
    const reply = await socket.request(
      {
        type: "broadcast.start",
        sdp,
        denoise: els.denoise.checked,
        title: els.title.value.trim(),
        ...(els.bleep?.checked
          ? { bleep: els.bleepSound.value, delay_s: Number(els.bleepDelay.value) }
          : { bleep: false }),
        blur_faces: els.blurFaces.checked,
        blur_plates: els.blurPlates.checked,
        blur_text: els.blurText.checked,
      },
      "broadcast.answer",
      { timeout: 20_000 },
    );
    if (mine !== attempt) return;
    sessionId = reply.session_id;
    elsewhereSession = null;
    await peer.setRemoteDescription({ type: "answer", sdp: reply.sdp });
    if (mine !== attempt) return;
    if (peer.connectionState === "connected") setState("live");
    else els.message.textContent = "Establishing the audio connection…";
  } catch (error) {
    if (mine !== attempt) return;
    // The server refused the offer (an error frame): it holds no session for us.
    if (error?.name === "SocketError" && !["timeout", "disconnected", "offline"].includes(error.code)) {
      signalled = false;
    }
    const deviceError = error instanceof DOMException && error.name !== "OperationError";
    const cameraError = deviceError && els.cameraOn.checked && stream && !cameraStream;
    fail(
      !pc && deviceError
        ? micErrorMessage(error)
        : cameraError
          ? cameraErrorMessage(error)
          : `Couldn't go live: ${errorMessage(error)}`,
    );
  }
}

async function stop() {
  const mine = ++attempt;
  discardedNote = null;
  const hadSession = sessionId !== null;
  setState("stopping", { message: "Ending the broadcast…" });
  let note = "";
  if (signalled) {
    try {
      const reply = await socket.request({ type: "broadcast.stop" }, "broadcast.ended", { timeout: 10_000 });
      if (reply.recording_id == null) note = discardedNote ?? "Nothing was recorded.";
    } catch (error) {
      note = `The server did not confirm the end: ${errorMessage(error)}`;
    }
  }
  if (mine !== attempt) return;
  teardownPeer();
  closeMic();
  closeCamera();
  if (hadSession) setState("ended", { message: note ? `Broadcast ended. ${note}` : "Broadcast ended." });
  else setState("idle");
}

// --- Events ----------------------------------------------------------------------

socket.on("session.stats", (msg) => {
  if (msg.session_id !== sessionId) return;
  showListeners(msg.listeners);
  const pii = msg.pii;
  if (pii && state === "live" && els.piiStatus) {
    // Fail closed, in the open: say when audio was muted because it could not be checked.
    const parts = [`Friends hear you ${pii.delay_s} s late.`];
    if (pii.redacted_s > 0) parts.push(`${pii.redacted_s} s bleeped so far.`);
    if (pii.muted_s > 0) parts.push(`${pii.muted_s} s muted: the server could not check it in time.`);
    showMessage(els.piiStatus, parts.join(" "));
  }
  const video = msg.video;
  if (video && state === "live") {
    // Fail closed, in the open: frames the server could not check in time left blurred whole.
    const blurred = [
      video.blur_faces && "faces",
      video.blur_plates && "licence plates",
      video.blur_text && "personal text",
    ].filter(Boolean);
    const list = blurred.length > 1 ? `${blurred.slice(0, -1).join(", ")} and ${blurred.at(-1)}` : blurred[0];
    const parts = [list ? `Camera: ${list} blurred.` : "Camera: nothing blurred."];
    if (video.frames_blurred_whole > blurredWhole) {
      parts.push("Video fully blurred: the server is overloaded.");
    }
    // The server keeps only the newest frame while it is busy: say when friends get
    // noticeably fewer frames than the camera sends.
    if (video.fps_camera >= 5 && video.fps_sent < 0.6 * video.fps_camera) {
      parts.push(
        `Friends see ${Math.round(video.fps_sent)} of your ${Math.round(video.fps_camera)} frames a second: the server is busy.`,
      );
    }
    blurredWhole = video.frames_blurred_whole;
    showMessage(els.videoStatus, parts.join(" "));
  }
});

// --- Live switches and who is listening ---------------------------------------------

function showMuted() {
  els.mute.textContent = muted ? "Unmute" : "Mute";
  els.mute.setAttribute("aria-pressed", String(muted));
  els.status.textContent = state === "live" && muted ? "Live · muted" : STATUS_TEXT[state] ?? state;
  publish();
}

function showListenerNames(listeners) {
  els.listenerNames.replaceChildren(
    ...listeners.map((person) =>
      h(
        "li",
        { title: person.username, dataset: { userId: String(person.id) } },
        avatar(person, "avatar-small"),
        h("span", { class: "name-list-text" }, person.display_name || person.username),
      ),
    ),
  );
  els.listenerNamesEmpty.hidden = listeners.length > 0;
}

function toggleMute() {
  if (state !== "live") return;
  socket.send({ type: "broadcast.control", muted: !muted });
}

socket.on("session.state", (msg) => {
  if (sessionId === null || msg.session_id !== sessionId) return;
  muted = Boolean(msg.muted);
  els.denoise.checked = Boolean(msg.denoise);
  showMuted();
});

socket.on("session.listeners", (msg) => {
  if (sessionId !== null && msg.session_id === sessionId) showListenerNames(msg.listeners || []);
});

// A limit will end the broadcast soon (today: the maximum length): say when, while live.
socket.on("session.warning", (msg) => {
  if (sessionId === null || msg.session_id !== sessionId) return;
  const endsAt = new Date(Date.now() + Number(msg.seconds_left || 0) * 1000);
  const clock = endsAt.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  limitWarning =
    `This broadcast will end at ${clock} (in ${formatDuration(msg.seconds_left)}): ` +
    "it is reaching the maximum length. Your recording is saved.";
  if (state === "live") els.message.textContent = limitWarning;
});

// While stopping, session.ended (just before broadcast.ended) says whether the
// recording was kept: a broadcast under MIN_RECORDING_S is not.
socket.on("session.ended", (msg) => {
  if (sessionId === null || msg.session_id !== sessionId || state !== "stopping") return;
  if (msg.recording_discarded === "too_short") {
    discardedNote = `It was shorter than ${msg.min_recording_s ?? 2} seconds, so it was not recorded.`;
  }
});

socket.on("session.ended", (msg) => {
  if (sessionId !== null && msg.session_id === sessionId && state !== "stopping") {
    attempt += 1;
    teardownPeer();
    closeMic();
    closeCamera();
    setState("ended", { message: END_REASONS[msg.reason] ?? "The broadcast ended." });
    if (msg.reason === "server_shutdown") publish({ restarted: true });
  } else if (state === "elsewhere" && elsewhereSession?.id === msg.session_id) {
    elsewhereSession = null;
    setState("idle");
  }
});

// Our own live/not-live status: the server tells all our pages when any of them starts or stops.
socket.on("live", (msg) => {
  if (msg.user_id !== me?.id || msg.session_id === sessionId) return;
  if (msg.live && (state === "idle" || state === "ended" || state === "error")) {
    elsewhereSession = { id: msg.session_id, started_at: msg.started_at };
    showElsewhere();
  } else if (!msg.live && state === "elsewhere") {
    elsewhereSession = null;
    setState("idle");
  }
});

// The socket dropped: the server keeps a live broadcast (its media still flows) for a
// grace period; take it back once the socket returns. A go-live still being answered
// is lost with the socket.
socket.onState((connState) => {
  if (state === "live" && sessionId !== null) {
    if (connState !== "open") {
      resuming = true;
      els.message.textContent = "Reconnecting to the server… (you are still live)";
      publish();
    } else if (resuming) {
      resume();
    }
    return;
  }
  if (connState === "open" || state !== "connecting") return;
  attempt += 1;
  teardownPeer();
  closeMic();
  closeCamera();
  setState("error", { error: "Lost the connection to the server, so the broadcast did not start." });
});

async function resume() {
  const mine = attempt;
  const id = sessionId;
  try {
    const reply = await socket.request({ type: "broadcast.resume", session_id: id }, "broadcast.resumed", {
      match: (msg) => msg.session_id === id,
    });
    if (mine !== attempt || !resuming) return;
    resuming = false;
    if (typeof reply.listeners === "number") showListeners(reply.listeners);
    if (typeof reply.muted === "boolean") muted = reply.muted;
    els.message.textContent = limitWarning;
    showMuted();
    if (mediaLost) reconnectMedia(); // the audio failed too while the socket was away
  } catch (error) {
    if (mine !== attempt || !resuming) return;
    if (["timeout", "disconnected", "offline"].includes(error?.code)) return; // next "open" retries
    attempt += 1;
    teardownPeer();
    closeMic();
    closeCamera();
    if (error?.code === "server_restarted") {
      setState("ended", { message: END_REASONS.server_shutdown });
      publish({ restarted: true });
    } else {
      setState("ended", { message: END_REASONS.disconnected });
    }
  }
}

// Another tab of ours took the broadcast over (broadcast.resume there).
socket.on("broadcast.moved", (msg) => {
  if (msg.session_id !== sessionId) return;
  attempt += 1;
  teardownPeer();
  closeMic();
  closeCamera();
  setState("idle");
});

/** Bind the go-live page's elements (the first page, or one navigated to) and show
 * the broadcast's current state on them. */
function bindPage() {
  Object.assign(els, page());
  els.start.addEventListener("click", start);
  els.stop.addEventListener("click", stop);
  els.mute.addEventListener("click", toggleMute);
  els.denoise.addEventListener("change", () => {
    if (state === "live") socket.send({ type: "broadcast.control", denoise: els.denoise.checked });
  });
  bindMic();
  if (!navigator.mediaDevices?.getUserMedia) {
    els.micHelp.textContent = "Microphone access needs a secure (HTTPS) connection and a modern browser.";
  }
}

function bindMic() {
els.micEnable.addEventListener("click", async () => {
  els.micEnable.disabled = true;
  try {
    showMessage(els.error, "");
    await openMic();
  } catch (error) {
    showMessage(els.error, micErrorMessage(error));
  } finally {
    els.micEnable.disabled = false;
  }
});
els.cameraOn.addEventListener("change", cameraSwitched);
els.camera.addEventListener("change", async () => {
  if (!cameraStream) return; // picked up when the camera is next opened
  try {
    showMessage(els.error, "");
    await openCamera();
  } catch (error) {
    showMessage(els.error, cameraErrorMessage(error));
  }
});
els.mic.addEventListener("change", async () => {
  if (!stream) return; // picked up when the microphone is next opened
  try {
    showMessage(els.error, "");
    await openMic();
  } catch (error) {
    showMessage(els.error, micErrorMessage(error));
  }
});
}

// In-app navigation brought a go-live page again: bind it, show where things are.
document.addEventListener("turbo:load", () => {
  const section = $("go-live");
  if (!section || section === els.section) return;
  const title = els.title?.value ?? "";
  const denoise = els.denoise?.checked ?? true;
  bindPage();
  if (state !== "idle") {
    els.title.value = title;
    els.denoise.checked = denoise;
  }
  elsewhereSession = state === "idle" ? readJson("active-session") : elsewhereSession;
  setState(state, shown);
  if (state === "live") showMuted();
  if (state === "live" || state === "elsewhere") showListeners(listenerCount);
  if (stream) {
    startMeter(stream);
    els.micEnable.hidden = true;
  }
  if (cameraStream) {
    els.cameraOn.checked = true;
    els.cameraFields.hidden = false;
    els.preview.srcObject = cameraStream;
  }
  if (state === "idle" && elsewhereSession) showElsewhere();
  refreshDevices();
});

navigator.mediaDevices?.addEventListener?.("devicechange", refreshDevices);
window.addEventListener("pagehide", () => {
  if (signalled) socket.send({ type: "broadcast.stop" });
});

bindPage();
setState("idle");
if (elsewhereSession) showElsewhere();
refreshDevices();
