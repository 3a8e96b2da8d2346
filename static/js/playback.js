// Only one recording or live stream plays at a time, in this tab and across tabs.
//
// Imported once per page (app.js), it watches every <audio>/<video> element of the
// document: media "play" events do not bubble, but a capturing listener on the
// document sees them all, so pages need no code of their own (the recordings
// page's players included). When one starts, every other element playing in this
// tab is paused, and the other Hearth tabs are told on the BroadcastChannel
// "hearth-playback" to pause theirs.
//
// A live stream is not "paused" but stopped (a paused live stream would resume
// late): its page registers what to do instead with onPreempt(element, fn), which
// is called even while the element is not playing yet (still connecting, or
// reconnecting), so that it does not start up again over the newer choice.
//
// A muted picture that plays beside its page's own sound (a live broadcast's camera,
// data-playback-companion) is neither a new choice nor paused here: it comes and
// goes with the stream its page stops.

const CHANNEL = "hearth-playback";
const tab = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
const stoppers = new Map(); // media element -> fn() that stops it instead of pause()
const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(CHANNEL) : null;

/** Silence every element of this document that is playing (or registered), except `keep`. */
function silenceAll(keep = null) {
  for (const [el, stop] of stoppers) {
    if (el !== keep) stop();
  }
  for (const el of document.querySelectorAll("audio, video")) {
    if (el.dataset.playbackCompanion !== undefined) continue;
    if (el !== keep && !el.paused && !stoppers.has(el)) el.pause();
  }
}

/**
 * When another player takes over, call `fn` instead of pausing `el` (e.g. a live
 * stream stops listening altogether).
 */
export function onPreempt(el, fn) {
  stoppers.set(el, fn);
}

document.addEventListener(
  "play",
  (event) => {
    const el = event.target;
    if (!(el instanceof HTMLMediaElement) || el.dataset.playbackCompanion !== undefined) return;
    silenceAll(el);
    channel?.postMessage({ type: "playing", tab });
  },
  true,
);

channel?.addEventListener("message", (event) => {
  if (event.data?.type === "playing" && event.data.tab !== tab) silenceAll();
});
