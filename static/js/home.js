// Dashboard: friends who are live, friends with presence, friend search and requests.
// Loads from the API, then stays current from WebSocket events without reloading.
import { api, errorMessage } from "./api.js";
import { pageSocket } from "./nav.js";
import {
  avatar,
  focusFirst,
  focusLost,
  formatDuration,
  h,
  listenUrl,
  nameParts,
  plural,
  readJson,
  refreshElapsed,
  secondsSince,
  showMessage,
  shownName,
} from "./ui.js";

const socket = pageSocket(); // its subscriptions end when the page is left (nav.js)

const $ = (id) => document.getElementById(id);
const els = {
  error: $("home-error"),
  liveSection: $("live-now"),
  liveList: $("live-now-list"),
  liveEmpty: $("live-now-empty"),
  friendsList: $("friends-list"),
  friendsEmpty: $("friends-empty"),
  incomingList: $("incoming-list"),
  incomingEmpty: $("incoming-empty"),
  incomingCount: $("incoming-count"),
  outgoingList: $("outgoing-list"),
  outgoingEmpty: $("outgoing-empty"),
  searchForm: $("friend-search"),
  searchInput: $("friend-search-input"),
  searchStatus: $("friend-search-status"),
  searchResults: $("friend-search-results"),
};

const state = {
  loaded: false,
  friends: new Map(), // user id -> {id, username, online, live}
  sessions: new Map(), // session id -> {id, broadcaster, started_at, listeners}
  incoming: [],
  outgoing: [],
};

// --- Loading ---------------------------------------------------------------------

let loadSeq = 0;

async function load() {
  const seq = ++loadSeq;
  try {
    const [friends, live] = await Promise.all([api("/api/friends"), api("/api/live")]);
    if (seq !== loadSeq) return; // a newer load is on its way
    state.friends = new Map(friends.friends.map((f) => [f.id, f]));
    state.incoming = friends.incoming;
    state.outgoing = friends.outgoing;
    state.sessions = new Map(live.sessions.map((s) => [s.id, s]));
    state.loaded = true;
    showMessage(els.error, "");
    render();
  } catch (error) {
    if (seq !== loadSeq) return;
    showMessage(els.error, `Couldn't load your friends: ${errorMessage(error)}`);
    if (!state.loaded) {
      for (const el of [els.liveEmpty, els.friendsEmpty]) el.textContent = "Not available right now.";
    }
  }
}

// --- Rendering -------------------------------------------------------------------

function presenceOf(friend) {
  if (friend.live || liveSessionOf(friend.id)) return "live";
  return friend.online ? "online" : "offline";
}

function liveSessionOf(userId) {
  for (const session of state.sessions.values()) {
    if (session.broadcaster.id === userId) return session;
  }
  return null;
}

/** A user's picture with their presence dot on its corner. */
function withPresence(picture, presence) {
  return h(
    "span",
    { class: "avatar-wrap" },
    picture,
    h("span", { class: "presence-dot", dataset: { presence }, "aria-hidden": "true" }),
  );
}

function setList(list, empty, items, emptyText) {
  // A row's control that held the focus and whose row is gone (taken away by this
  // render: a request cancelled, declined, or answered in another tab) hands it on
  // like a pressed button does, whichever of the renders racing for it comes last.
  const focused = document.activeElement;
  const successor = list.contains(focused) ? focusSuccessor(focused, null) : null;
  replaceRows(list, items);
  empty.textContent = emptyText;
  empty.hidden = items.length > 0;
  successor?.();
}

const rowId = (row) => [row.dataset.requestId, row.dataset.sessionId, row.dataset.userId].join("/");
const controlKind = (el) => [...el.classList].find((name) => /-(button|link)$/.test(name));

// Lists re-render whole on every event (presence, requests): a row's control that held
// the focus gives it to its copy on the new row of the same request, session or user.
function replaceRows(list, rows) {
  const focused = list.contains(document.activeElement) ? document.activeElement : null;
  const row = focused?.closest("li");
  const kind = focused && controlKind(focused);
  list.replaceChildren(...rows);
  if (!row || !kind) return;
  rows.find((r) => rowId(r) === rowId(row))?.querySelector(`.${kind}`)?.focus();
}

function renderLive() {
  const sessions = [...state.sessions.values()].sort((a, b) => a.started_at.localeCompare(b.started_at));
  const items = sessions.map((s) =>
    h(
      "li",
      { class: "live-now-item row", dataset: { sessionId: s.id, userId: s.broadcaster.id } },
      withPresence(avatar(s.broadcaster), "live"),
      h(
        "span",
        { class: "row-main" },
        ...nameParts(s.broadcaster, "broadcaster-name"),
        h(
          "span",
          { class: "row-meta" },
          "live for ",
          h("time", { class: "elapsed mono", "data-elapsed-since": s.started_at }, formatDuration(secondsSince(s.started_at))),
          typeof s.listeners === "number" ? ` · ${plural(s.listeners, "listener")}` : "",
        ),
      ),
      h(
        "a",
        {
          class: "btn btn-primary btn-small listen-link",
          href: listenUrl(s.id),
          "aria-label": `Listen to ${shownName(s.broadcaster)}`,
        },
        "Listen",
      ),
    ),
  );
  setList(els.liveList, els.liveEmpty, items, "None of your friends is live right now.");
  els.liveSection.dataset.live = String(items.length > 0); // the heading's red dot: only when someone is
  refreshElapsed();
}

const PRESENCE_TEXT = { live: "live", online: "online", offline: "offline" };

function renderFriends() {
  const friends = [...state.friends.values()].sort((a, b) => a.username.localeCompare(b.username));
  const items = friends.map((friend) => {
    const presence = presenceOf(friend);
    const session = liveSessionOf(friend.id);
    const sessionId = session?.id ?? friend.live?.session_id;
    return h(
      "li",
      { class: "friend-item row", dataset: { userId: friend.id, presence } },
      withPresence(avatar(friend), presence),
      h(
        "span",
        { class: "row-main" },
        ...nameParts(friend, "friend-name"),
        h("span", { class: "row-meta presence-text" }, PRESENCE_TEXT[presence]),
      ),
      presence === "live" && sessionId
        ? h("a", { class: "btn btn-small listen-link", href: listenUrl(sessionId), "aria-label": `Listen to ${shownName(friend)}` }, "Listen")
        : null,
      h(
        "span",
        { class: "row-actions" },
        h(
          "button",
          {
            type: "button",
            class: "btn btn-ghost btn-small unfriend-button",
            "aria-label": `Unfriend ${friend.username}`,
            onclick: (event) => unfriend(friend, event.currentTarget),
          },
          "Unfriend",
        ),
        blockButton(friend),
      ),
    );
  });
  setList(els.friendsList, els.friendsEmpty, items, "No friends yet — search for someone below.");
}

function requestItem(request, buttons) {
  return h(
    "li",
    { class: "request-item row", dataset: { requestId: request.id, userId: request.user.id } },
    avatar(request.user),
    h("span", { class: "row-main" }, ...nameParts(request.user)),
    h("span", { class: "row-actions" }, buttons),
  );
}

function actionButton(label, ariaLabel, className, action) {
  return h(
    "button",
    { type: "button", class: `btn btn-small ${className}`, "aria-label": ariaLabel, onclick: (e) => action(e.currentTarget) },
    label,
  );
}

function renderRequests() {
  const incoming = state.incoming.map((r) =>
    requestItem(r, [
      actionButton("Accept", `Accept ${r.user.username}`, "btn-primary accept-button", (b) => requestAction(r, "accept", b)),
      actionButton("Decline", `Decline ${r.user.username}`, "btn-ghost decline-button", (b) => requestAction(r, "decline", b)),
    ]),
  );
  setList(els.incomingList, els.incomingEmpty, incoming, "No requests right now.");
  els.incomingCount.textContent = String(incoming.length);
  els.incomingCount.hidden = incoming.length === 0;

  const outgoing = state.outgoing.map((r) =>
    requestItem(r, [
      actionButton("Cancel", `Cancel request to ${r.user.username}`, "btn-ghost cancel-button", (b) => requestAction(r, "cancel", b)),
    ]),
  );
  setList(els.outgoingList, els.outgoingEmpty, outgoing, "You haven't sent any requests.");
}

function render() {
  renderLive();
  renderFriends();
  renderRequests();
  refreshSearchRelations();
}

// --- Actions ---------------------------------------------------------------------

async function runAction(button, fn) {
  const refocus = focusSuccessor(button, els.searchStatus);
  button.disabled = true;
  try {
    await fn();
    showMessage(els.error, "");
    await load();
  } catch (error) {
    showMessage(els.error, errorMessage(error));
  } finally {
    button.disabled = false;
  }
  refocus();
}

// A row's button (Accept, Decline, Cancel, Unfriend, Block) takes its row away when the
// lists re-render. Returns what to call after: if the focus was lost, it goes to the
// same button on the row now in its place (or the row before), else to the list's
// "none" text, else to `fallback`.
function focusSuccessor(button, fallback) {
  const row = button.closest("li");
  const list = row?.parentElement;
  const index = list ? [...list.children].indexOf(row) : -1;
  const kind = controlKind(button);
  return () => {
    if (!focusLost() || !list || !kind) return;
    const rows = [...list.children];
    const same = (i) => rows[i]?.querySelector(`.${kind}`);
    const none = list.nextElementSibling?.classList.contains("empty") ? list.nextElementSibling : null;
    focusFirst(same(index), same(index - 1), none, fallback);
  };
}

function unfriend(friend, button) {
  if (!window.confirm(`Remove ${friend.username} from your friends?`)) return;
  runAction(button, () => api(`/api/friends/${encodeURIComponent(friend.id)}/unfriend`, { method: "POST" }));
}

function blockButton(user) {
  return h(
    "button",
    {
      type: "button",
      class: "btn btn-ghost btn-small block-button",
      "aria-label": `Block ${user.username}`,
      onclick: (event) => block(user, event.currentTarget),
    },
    "Block",
  );
}

function block(user, button) {
  const question = `Block ${user.username}? You will stop being friends, and neither of you can send requests, see the other online or listen to the other. You can unblock on your account page.`;
  if (!window.confirm(question)) return;
  runAction(button, async () => {
    await api("/api/blocks", { method: "POST", body: { user_id: user.id } });
    lastResults = lastResults.filter((u) => u.id !== user.id);
    renderSearchResults();
    els.searchStatus.textContent = `You blocked ${user.username}.`;
    actionNote = null;
  });
}

function requestAction(request, action, button) {
  runAction(button, () =>
    api(`/api/friends/requests/${encodeURIComponent(request.id)}/${action}`, { method: "POST" }),
  );
}

// --- Search ----------------------------------------------------------------------

let searchSeq = 0;
let searchTimer = null;
let lastResults = [];
let lastFoundText = "";
// The status line after "Add friend" ("Friend request sent."): it holds only while the
// relation it reported holds; a cancel, decline or unfriend puts the count back.
let actionNote = null; // {userId, relation}

// What each relation shows instead of an "Add friend" button.
const RELATION_TEXT = { friend: "Friends", outgoing: "Request sent" };

// Relations change (accept, unfriend...) while results are on screen: derive them from state.
function currentRelation(user) {
  if (state.friends.has(user.id)) return "friend";
  if (state.outgoing.some((r) => r.user.id === user.id)) return "outgoing";
  if (state.incoming.some((r) => r.user.id === user.id)) return "incoming";
  return state.loaded ? "none" : user.relation;
}

function searchResultItem(user) {
  const relation = currentRelation(user);
  let action;
  if (relation === "none" || relation === "incoming") {
    const label = relation === "incoming" ? "Accept" : "Add friend";
    action = h(
      "button",
      {
        type: "button",
        class: "btn btn-primary btn-small add-friend-button",
        "aria-label": `${label} ${user.username}`,
        onclick: (e) => addFriend(user, e.currentTarget),
      },
      label,
    );
  } else {
    action = h("span", { class: "relation-text" }, RELATION_TEXT[relation] ?? relation);
  }
  return h(
    "li",
    { class: "search-result row", dataset: { userId: user.id, username: user.username, relation } },
    avatar(user),
    h("span", { class: "row-main" }, ...nameParts(user)),
    h("span", { class: "row-actions" }, action, relation === "friend" ? null : blockButton(user)),
  );
}

function renderSearchResults() {
  replaceRows(els.searchResults, lastResults.map(searchResultItem));
}

function refreshSearchRelations() {
  if (!lastResults.length) return;
  renderSearchResults();
  if (actionNote) {
    const user = lastResults.find((u) => u.id === actionNote.userId);
    if (!user || currentRelation(user) !== actionNote.relation) {
      actionNote = null;
      els.searchStatus.textContent = lastFoundText;
    }
  }
}

async function search(query) {
  const seq = ++searchSeq;
  actionNote = null;
  query = query.trim();
  if (!query) {
    lastResults = [];
    renderSearchResults();
    els.searchStatus.textContent = "";
    return;
  }
  els.searchStatus.textContent = "Searching…";
  try {
    const data = await api(`/api/users/search?q=${encodeURIComponent(query)}`);
    if (seq !== searchSeq) return;
    lastResults = data.users;
    renderSearchResults();
    lastFoundText = lastResults.length
      ? `${lastResults.length} ${lastResults.length === 1 ? "person" : "people"} found.`
      : `Nobody called “${query}”.`;
    els.searchStatus.textContent = lastFoundText;
  } catch (error) {
    if (seq !== searchSeq) return;
    els.searchStatus.textContent = errorMessage(error);
  }
}

async function addFriend(user, button) {
  button.disabled = true;
  try {
    const result = await api("/api/friends/requests", { method: "POST", body: { username: user.username } });
    els.searchStatus.textContent =
      result?.message || (result?.status === "accepted" ? `You and ${user.username} are now friends.` : `Request sent to ${user.username}.`);
    user.relation = result?.status === "accepted" ? "friend" : "outgoing";
    actionNote = { userId: user.id, relation: user.relation };
    await load();
    renderSearchResults();
    if (focusLost()) focusFirst(els.searchStatus); // the button became "Request sent"
  } catch (error) {
    els.searchStatus.textContent = errorMessage(error);
    button.disabled = false;
  }
}

els.searchForm.addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(searchTimer);
  search(els.searchInput.value);
});
els.searchInput.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => search(els.searchInput.value), 300);
});

// --- Live events -----------------------------------------------------------------

socket.on("presence", (msg) => {
  const friend = state.friends.get(msg.user_id);
  if (!friend) return;
  friend.online = Boolean(msg.online);
  renderFriends();
});

const me = readJson("current-user", {});

socket.on("live", (msg) => {
  if (msg.user_id === me?.id) return; // our own broadcast is not "a friend live"
  const friend = state.friends.get(msg.user_id);
  for (const [id, session] of state.sessions) {
    if (session.broadcaster.id === msg.user_id) state.sessions.delete(id);
  }
  if (msg.live) {
    state.sessions.set(msg.session_id, {
      id: msg.session_id,
      broadcaster: {
        id: msg.user_id,
        username: msg.username,
        display_name: msg.display_name ?? "",
        avatar_url: msg.avatar_url ?? null,
      },
      started_at: msg.started_at,
      listeners: 0,
    });
  }
  if (friend) {
    friend.live = msg.live ? { session_id: msg.session_id, started_at: msg.started_at } : null;
    if (msg.live) friend.online = true;
  }
  renderLive();
  renderFriends();
});

socket.on("session.stats", (msg) => {
  const session = state.sessions.get(msg.session_id);
  if (!session) return;
  session.listeners = msg.listeners;
  renderLive();
});

socket.on("session.ended", (msg) => {
  const session = state.sessions.get(msg.session_id);
  if (!session) return;
  state.sessions.delete(msg.session_id);
  const friend = state.friends.get(session.broadcaster.id);
  if (friend) friend.live = null;
  renderLive();
  renderFriends();
});

socket.on("friends.changed", () => load());

// Events may have been missed while disconnected: reload after a reconnect.
socket.onState((connState, { reconnected }) => {
  if (reconnected) load();
});

load();
