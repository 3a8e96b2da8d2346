// WebRTC helpers. The aiortc server does not trickle ICE candidates, so an offer is
// sent only once gathering is complete (or after a short timeout).
import { readJson } from "./ui.js";

const ICE_GATHER_TIMEOUT_MS = 3_000;

/** A new RTCPeerConnection using the ICE servers the page was rendered with. */
export function createPeerConnection() {
  if (typeof RTCPeerConnection === "undefined") {
    throw new Error("this browser does not support WebRTC.");
  }
  const servers = readJson("ice-servers", []);
  return new RTCPeerConnection({ iceServers: Array.isArray(servers) ? servers : [] });
}

/** Resolve when ICE gathering is complete, or after `timeoutMs` (never rejects). */
export function iceGatheringComplete(pc, timeoutMs = ICE_GATHER_TIMEOUT_MS) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** Create an offer, set it locally, wait for ICE gathering and return the full SDP. */
export async function createOfferSdp(pc) {
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await iceGatheringComplete(pc);
  return pc.localDescription.sdp;
}

/** Close a peer connection, ignoring one that is already closed. */
export function closePeer(pc) {
  try {
    pc?.close();
  } catch {
    // already closed
  }
}
