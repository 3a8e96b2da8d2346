// In-app navigation keeps one document (Turbo Drive, vendored in static/vendor/turbo):
// links swap the page's <body> and keep the elements marked data-turbo-permanent
// (the header, the live bar, the toasts), so a live broadcast, its peer connection,
// microphone and socket survive a click on "Home" or "Recordings".
//
// Page scripts are ES modules, which a document evaluates once per URL. Turbo is told
// not to run the scripts of the pages it swaps in; this module imports them itself:
// - a script marked data-page-module (home, recordings, recording, listen) gets a
//   fresh instance per visit (imported as "…js?page=N"; its own imports such as
//   socket.js stay the one shared instance). It subscribes through pageSocket() and
//   listens to pageSignal(), so its handlers go when the page is left;
// - any other module (golive.js) is imported once and re-binds itself to the page's
//   new elements on "turbo:load": it owns the live broadcast, which outlives the page.
// Forms (sign-up, log-in, log-out) still submit as full page loads.
import * as Turbo from "../vendor/turbo/turbo-8.0.23.esm.js";
import { socket } from "./socket.js";

Turbo.config.forms.mode = "off";
// The progress bar is a <style> element that the CSP (style-src 'self') refuses.
Turbo.config.drive.progressBarDelay = 2_000_000_000;

let controller = new AbortController();
let visits = 0;

/** Aborted when the current page is left (its body replaced). */
export function pageSignal() {
  return controller.signal;
}

/** The shared socket, with subscriptions that end when the current page is left. */
export function pageSocket() {
  const signal = pageSignal();
  const scoped = (off) => {
    signal.addEventListener("abort", off, { once: true });
    return off;
  };
  return {
    on: (type, fn) => scoped(socket.on(type, fn)),
    onState: (fn) => scoped(socket.onState(fn)),
    send: (message) => socket.send(message),
    request: (...args) => socket.request(...args),
    get isOpen() {
      return socket.isOpen;
    },
    get state() {
      return socket.state;
    },
  };
}

document.addEventListener("turbo:before-render", (event) => {
  for (const script of event.detail.newBody.querySelectorAll("script[type=module][src]")) {
    script.setAttribute("data-turbo-eval", "false");
  }
  controller.abort();
  controller = new AbortController();
});

document.addEventListener("turbo:load", () => {
  visits += 1;
  if (visits === 1) return; // the first page: the browser ran its scripts
  for (const link of document.querySelectorAll(".site-nav a[href]")) {
    if (new URL(link.href).pathname === location.pathname) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  for (const script of document.body.querySelectorAll("script[type=module][src]")) {
    const url = new URL(script.src, location.href);
    if (script.hasAttribute("data-page-module")) url.searchParams.set("page", String(visits));
    import(url.href).catch((error) => console.warn("Hearth: page script failed:", error));
  }
});

/** Go to an in-app URL without leaving the document. */
export function visit(url) {
  Turbo.visit(url);
}
