// The page's one WebSocket to the server (/ws/): reconnects with backoff, keeps
// itself alive with pings, fans incoming messages out to subscribers by "type",
// and offers request(): send a message and await its reply.

const PING_INTERVAL_MS = 20_000;
const BACKOFF_MIN_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;
const DEFAULT_TIMEOUT_MS = 15_000;

/** An error frame from the server, or a request that could not complete. */
export class SocketError extends Error {
  constructor(message, code = "error") {
    super(message);
    this.name = "SocketError";
    this.code = code;
  }
}

class HearthSocket {
  #ws = null;
  #handlers = new Map(); // type -> Set<fn>
  #stateHandlers = new Set();
  #pending = new Set(); // {reject} of requests awaiting a reply
  #backoff = BACKOFF_MIN_MS;
  #pingTimer = null;
  #retryTimer = null;
  #started = false;
  #opens = 0;
  state = "idle"; // idle | connecting | open | closed | signed-out

  /** Open the socket (once per page; later calls do nothing). */
  start() {
    if (this.#started) return;
    this.#started = true;
    // Back online after a network drop: retry now instead of waiting out the backoff.
    window.addEventListener("online", () => {
      if (!this.#ws && this.state !== "signed-out") {
        this.#backoff = BACKOFF_MIN_MS;
        this.#connect();
      }
    });
    this.#connect();
  }

  /** Call fn(message) for each incoming message of this type ("*" for all). Returns an unsubscribe function. */
  on(type, fn) {
    if (!this.#handlers.has(type)) this.#handlers.set(type, new Set());
    this.#handlers.get(type).add(fn);
    return () => this.#handlers.get(type)?.delete(fn);
  }

  /** Call fn(state, {reconnected}) whenever the connection state changes. */
  onState(fn) {
    this.#stateHandlers.add(fn);
    return () => this.#stateHandlers.delete(fn);
  }

  get isOpen() {
    return this.#ws?.readyState === WebSocket.OPEN;
  }

  /** Send a message if connected; returns whether it was sent. */
  send(message) {
    if (!this.isOpen) return false;
    this.#ws.send(JSON.stringify(message));
    return true;
  }

  /**
   * Send `message` and resolve with the first reply whose type is in `expectTypes`
   * (and that passes `match`, if given). Rejects with SocketError on an error frame
   * whose "ref" is the sent type, on timeout, or if the connection drops.
   */
  request(message, expectTypes, { timeout = DEFAULT_TIMEOUT_MS, match = () => true } = {}) {
    return new Promise((resolve, reject) => {
      const types = Array.isArray(expectTypes) ? expectTypes : [expectTypes];
      const offs = [];
      let timer = null;
      const entry = {};
      const finish = (fn, value) => {
        clearTimeout(timer);
        offs.forEach((off) => off());
        this.#pending.delete(entry);
        fn(value);
      };
      entry.reject = (error) => finish(reject, error);
      for (const type of types) {
        offs.push(this.on(type, (msg) => match(msg) && finish(resolve, msg)));
      }
      offs.push(
        this.on("error", (msg) => {
          if (msg.ref === message.type) {
            finish(reject, new SocketError(msg.message || "The server refused the request.", msg.code));
          }
        }),
      );
      this.#pending.add(entry);
      timer = setTimeout(
        () => entry.reject(new SocketError("The server did not answer in time.", "timeout")),
        timeout,
      );
      if (!this.send(message)) {
        entry.reject(new SocketError("Not connected to the server. Try again in a moment.", "offline"));
      }
    });
  }

  #setState(state) {
    this.state = state;
    const info = { reconnected: state === "open" && this.#opens > 1 };
    for (const fn of this.#stateHandlers) fn(state, info);
  }

  #dispatch(message) {
    for (const key of [message.type, "*"]) {
      for (const fn of [...(this.#handlers.get(key) ?? [])]) {
        try {
          fn(message);
        } catch (error) {
          // A broken subscriber must not stop the others; report without failing the page.
          console.warn("Hearth: handler for", message.type, "failed:", error);
        }
      }
    }
  }

  #connect() {
    clearTimeout(this.#retryTimer);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}/ws/`);
    } catch {
      this.#scheduleReconnect();
      return;
    }
    this.#ws = ws;
    this.#setState("connecting");
    ws.addEventListener("open", () => {
      this.#backoff = BACKOFF_MIN_MS;
      this.#opens += 1;
      this.#pingTimer = setInterval(() => this.send({ type: "ping" }), PING_INTERVAL_MS);
      this.#setState("open");
    });
    ws.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && typeof message.type === "string") this.#dispatch(message);
    });
    ws.addEventListener("close", (event) => {
      clearInterval(this.#pingTimer);
      if (this.#ws !== ws) return;
      this.#ws = null;
      for (const entry of [...this.#pending]) {
        entry.reject(new SocketError("The connection to the server was lost.", "disconnected"));
      }
      if (event.code === 4401) {
        // The server no longer knows this session: retrying will not help.
        this.#setState("signed-out");
        return;
      }
      this.#setState("closed");
      this.#scheduleReconnect();
    });
  }

  #scheduleReconnect() {
    const delay = this.#backoff * (0.75 + Math.random() * 0.5);
    this.#backoff = Math.min(this.#backoff * 2, BACKOFF_MAX_MS);
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }
}

/** The page's shared socket (ES modules are singletons, so every script gets this one). */
export const socket = new HearthSocket();
