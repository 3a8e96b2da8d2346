// Runs once per document (in-app links keep it, see nav.js): opens the shared socket
// and drives the header's connection indicator; alerts about friends going live; the
// live bar; one player at a time.
import "./alerts.js";
import "./livebar.js";
import "./nav.js";
import "./playback.js";
import { socket } from "./socket.js";

const indicator = document.getElementById("ws-status");
const LABELS = {
  idle: "Connecting…",
  connecting: "Connecting…",
  open: "Connected",
  closed: "Reconnecting…",
  "signed-out": "Signed out — reload",
};

function render(state) {
  if (!indicator) return;
  indicator.dataset.state = state;
  const label = LABELS[state] ?? state;
  indicator.querySelector(".ws-label").textContent = label;
  indicator.title = `Real-time connection: ${label}`;
}

socket.onState(render);
render(socket.state);
socket.start();
