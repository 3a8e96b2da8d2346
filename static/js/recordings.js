// Recordings: the user's own and friends', newest first, a page at a time ("Show
// more"), filtered by who broadcast, with a player each and a link to each
// recording's page. Owners can rename (inline form, PATCH) and delete (confirm,
// DELETE). The list refreshes on "recordings.changed" and when a friend goes live
// or stops ("live"), without interrupting a playing item. Times are the server's
// labels (one format everywhere, see streams/when.py).
// The search box searches the redacted transcripts (GET /api/recordings/search): the
// results replace the list until the box is cleared; each links to its recording's
// page at the moment the words are heard (?t=seconds). The query is kept in the
// address (?q=), so Back from a recording returns to the same results.
import { api, errorMessage } from "./api.js";
import { pageSocket } from "./nav.js";
import { formatDuration, h, readJson, showMessage, shownName } from "./ui.js";

const socket = pageSocket(); // its subscriptions end when the page is left (nav.js)

const $ = (id) => document.getElementById(id);
const els = {
  list: $("recordings-list"),
  empty: $("recordings-empty"),
  error: $("recordings-error"),
  status: $("recordings-status"),
  owner: $("recordings-owner"),
  more: $("recordings-more"),
  all: $("recordings-all"),
  searchForm: $("recordings-search-form"),
  search: $("recordings-search"),
  results: $("search-results"),
  resultsTitle: $("search-results-title"),
  resultsList: $("search-results-list"),
  searchMore: $("search-more"),
};

const PAGE = 20;
const items = new Map(); // recording id -> {li, parts, recording}
let loaded = false;
let loadSeq = 0;
let next = null; // cursor of the page after those shown, null at the end

function query(extra = {}) {
  const params = new URLSearchParams();
  if (els.owner.value) params.set("owner", els.owner.value);
  for (const [key, value] of Object.entries(extra)) params.set(key, value);
  return `/api/recordings?${params}`;
}

/** Reload what is shown (at least one page, as many items as are shown now). */
async function load() {
  const seq = ++loadSeq;
  const limit = Math.min(100, Math.max(PAGE, items.size));
  try {
    const data = await api(query({ limit }));
    if (seq !== loadSeq) return;
    loaded = true;
    showMessage(els.error, "");
    next = data.next;
    render(data.recordings);
  } catch (error) {
    if (seq !== loadSeq) return;
    showMessage(els.error, `Couldn't load recordings: ${errorMessage(error)}`);
    if (!loaded) els.empty.textContent = "Recordings are not available right now.";
  }
}

async function loadMore() {
  if (!next) return;
  const seq = ++loadSeq;
  els.more.disabled = true;
  try {
    const data = await api(query({ before: next, limit: PAGE }));
    if (seq !== loadSeq) return;
    next = data.next;
    render([...[...items.values()].map((item) => item.recording), ...data.recordings]);
  } catch (error) {
    if (seq === loadSeq) showMessage(els.error, `Couldn't load more recordings: ${errorMessage(error)}`);
  } finally {
    els.more.disabled = false;
  }
}

async function refreshOwners() {
  try {
    const data = await api("/api/friends");
    const chosen = els.owner.value;
    const me = readJson("current-user", {});
    els.owner.replaceChildren(
      h("option", { value: "" }, "Everyone"),
      h("option", { value: me.id }, "You"),
      ...data.friends.map((friend) => h("option", { value: friend.id }, shownName(friend))),
    );
    els.owner.value = [...els.owner.options].some((o) => o.value === chosen) ? chosen : "";
  } catch {
    // Keep the list the page came with.
  }
}

function render(recordings) {
  const seen = new Set();
  const nodes = recordings.map((rec) => {
    seen.add(rec.id);
    let item = items.get(rec.id);
    if (!item) {
      item = build(rec);
      items.set(rec.id, item);
    }
    update(item, rec);
    return item.li;
  });
  for (const [id, item] of items) {
    if (!seen.has(id)) {
      item.parts.audio?.pause();
      items.delete(id);
    }
  }
  // Move nodes into order without re-creating them (a playing <audio> keeps playing).
  nodes.forEach((node, index) => {
    if (els.list.children[index] !== node) els.list.insertBefore(node, els.list.children[index] ?? null);
  });
  while (els.list.children.length > nodes.length) els.list.lastElementChild.remove();
  els.empty.textContent = els.owner.value
    ? "No recordings by this person yet."
    : "No recordings yet. When you or your friends go live, the broadcasts appear here.";
  els.empty.hidden = nodes.length > 0;
  els.more.hidden = !next;
}

function build(rec) {
  const parts = {
    title: h("h2", { class: "recording-title" }),
    owner: h("span", { class: "recording-owner" }),
    date: h("time", { class: "recording-date" }),
    duration: h("span", { class: "recording-duration mono" }),
    badges: h("span", { class: "badges" }),
    player: h("div", { class: "recording-player" }),
    actions: h("div", { class: "row-actions recording-actions" }),
    form: null,
    audio: null,
  };
  const li = h(
    "li",
    { class: "recording-item card", dataset: { recordingId: rec.id } },
    h(
      "div",
      { class: "recording-head" },
      h("div", { class: "recording-heading" }, parts.title, h("p", { class: "row-meta" }, parts.owner, " · ", parts.date, " · ", parts.duration)),
      parts.badges,
    ),
    parts.player,
    parts.actions,
  );
  return { li, parts, recording: rec };
}

function update(item, rec) {
  const { parts } = item;
  item.recording = rec;
  parts.title.replaceChildren(h("a", { href: rec.page_url, class: "recording-link" }, rec.title || "Untitled"));
  parts.owner.textContent = rec.is_owner ? "You" : shownName(rec.owner);
  parts.owner.title = rec.owner.username;
  parts.date.textContent = rec.started_label;
  parts.date.setAttribute("datetime", rec.started_at);
  const inProgress = !rec.ended_at;
  parts.duration.textContent = inProgress ? "recording…" : formatDuration(rec.duration_s);

  parts.badges.replaceChildren(
    ...[
      inProgress ? h("span", { class: "badge badge-live" }, "Recording") : null,
      rec.processing?.denoise ? h("span", { class: "badge" }, "Denoised") : null,
      rec.kind === "video" ? h("span", { class: "badge" }, "Video") : null,
    ].filter(Boolean),
  );

  if (inProgress) {
    parts.audio = null;
    parts.player.replaceChildren(
      h(
        "p",
        { class: "muted" },
        "Still recording — it can be played once the broadcast ends.",
        rec.session_id && !rec.is_owner ? h("span", {}, " ", h("a", { href: `/listen/${rec.session_id}/`, class: "listen-live-link" }, "Listen live")) : null,
      ),
    );
  } else if (parts.audio && parts.audio.getAttribute("src") !== rec.audio_url) {
    // Same recording, new file (compressed to Ogg/Opus after the end): swap the
    // source in place, carrying the position and play state over.
    swapSource(parts.audio, rec.audio_url);
    parts.audio.setAttribute("aria-label", `Play ${rec.title || "recording"}`);
  } else if (!parts.audio) {
    // A video recording (MP4) plays in a <video>; audio in an <audio>.
    parts.audio = h(rec.kind === "video" ? "video" : "audio", {
      controls: true,
      preload: "metadata",
      playsinline: rec.kind === "video",
      class: rec.kind === "video" ? "recording-list-video" : null,
      src: rec.audio_url,
      "aria-label": `Play ${rec.title || "recording"}`,
    });
    parts.player.replaceChildren(parts.audio);
  } else {
    parts.audio.setAttribute("aria-label", `Play ${rec.title || "recording"}`);
  }

  if (rec.is_owner && !parts.form && !parts.actions.childElementCount) {
    parts.actions.append(
      h("button", { type: "button", class: "btn btn-small rename-button", onclick: () => openRename(item) }, "Rename"),
      h("button", { type: "button", class: "btn btn-small btn-danger-ghost delete-button", onclick: (e) => remove(item, e.currentTarget) }, "Delete"),
    );
  }
  // A recording still being written cannot be deleted (the server answers 409).
  const del = parts.actions.querySelector(".delete-button");
  if (del) del.hidden = inProgress;
  for (const button of parts.actions.querySelectorAll("button")) {
    const verb = button.classList.contains("rename-button") ? "Rename" : "Delete";
    button.setAttribute("aria-label", `${verb} ${rec.title || "recording"}`);
  }
}

function swapSource(audio, url) {
  const at = audio.currentTime;
  const playing = !audio.paused;
  audio.src = url;
  audio.addEventListener(
    "loadedmetadata",
    () => {
      audio.currentTime = at;
      if (playing) audio.play().catch(() => {});
    },
    { once: true },
  );
}

function openRename(item) {
  const { parts } = item;
  const inputId = `rename-${item.recording.id}`;
  const input = h("input", { id: inputId, name: "title", type: "text", maxlength: 120, required: true, value: item.recording.title });
  const error = h("p", { class: "field-errors", role: "alert", hidden: true });
  const close = () => {
    parts.form.remove();
    parts.form = null;
    parts.actions.hidden = false;
    parts.actions.querySelector(".rename-button")?.focus();
  };
  parts.form = h(
    "form",
    { class: "rename-form", onsubmit: (event) => saveRename(event, item, input, error, close) },
    h("label", { for: inputId }, "New title"),
    h(
      "div",
      { class: "input-row" },
      input,
      h("button", { type: "submit", class: "btn btn-primary btn-small" }, "Save"),
      h("button", { type: "button", class: "btn btn-ghost btn-small", onclick: close }, "Cancel"),
    ),
    error,
  );
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close();
  });
  parts.actions.hidden = true;
  parts.actions.after(parts.form);
  input.focus();
  input.select();
}

async function saveRename(event, item, input, error, close) {
  event.preventDefault();
  const title = input.value.trim();
  if (!title) {
    showMessage(error, "Enter a title.");
    return;
  }
  const submit = event.currentTarget.querySelector("button[type=submit]");
  submit.disabled = true;
  try {
    const updated = await api(`/api/recordings/${encodeURIComponent(item.recording.id)}`, {
      method: "PATCH",
      body: { title },
    });
    update(item, updated && updated.id ? updated : { ...item.recording, title });
    close();
    els.status.textContent = `Renamed to “${title}”.`;
  } catch (err) {
    showMessage(error, errorMessage(err));
    submit.disabled = false;
  }
}

async function remove(item, button) {
  const title = item.recording.title || "this recording";
  if (!window.confirm(`Delete “${title}”? This cannot be undone.`)) return;
  button.disabled = true;
  try {
    await api(`/api/recordings/${encodeURIComponent(item.recording.id)}`, { method: "DELETE" });
    item.parts.audio?.pause();
    items.delete(item.recording.id);
    item.li.remove();
    els.empty.hidden = items.size > 0;
    els.status.textContent = `Deleted “${title}”.`;
  } catch (error) {
    showMessage(els.error, errorMessage(error));
    button.disabled = false;
  }
}

// --- Transcript search ---------------------------------------------------------------

const SEARCH_MAX = 100; // characters, as the server allows
let searched = ""; // the query whose results are shown ("" : the list is shown)
let searchNext = null; // cursor of the next page of results
let searchSeq = 0;
let searchTimer = null;

function searchUrl(q, extra = {}) {
  const params = new URLSearchParams({ q });
  if (els.owner.value) params.set("owner", els.owner.value);
  for (const [key, value] of Object.entries(extra)) params.set(key, value);
  return `/api/recordings/search?${params}`;
}

/** The snippet as text nodes, the matched words in <mark> (never parsed as HTML). */
function snippetNodes(snippet, highlights) {
  const nodes = [];
  let at = 0;
  for (const [start, end] of highlights || []) {
    if (start < at || end > snippet.length) continue;
    nodes.push(snippet.slice(at, start), h("mark", {}, snippet.slice(start, end)));
    at = end;
  }
  nodes.push(snippet.slice(at));
  return nodes.filter((node) => node !== "");
}

function resultItem(result) {
  const rec = result.recording;
  const title = rec.title || "Untitled";
  return h(
    "li",
    { class: "recording-item card search-result", dataset: { recordingId: rec.id } },
    h("h3", { class: "recording-title" }, h("a", { href: result.url, class: "recording-link" }, title)),
    h(
      "p",
      { class: "row-meta" },
      rec.is_owner ? "You" : rec.owner.username,
      " · ",
      h("time", { datetime: rec.started_at }, rec.started_label),
    ),
    h("p", { class: "search-snippet" }, ...snippetNodes(result.snippet, result.highlights)),
    h(
      "a",
      { href: result.url, class: "btn btn-small search-play", "aria-label": `Play ${title} from ${formatDuration(result.start_s)}` },
      `Play from ${formatDuration(result.start_s)}`,
    ),
  );
}

function showSearch(on) {
  els.results.hidden = !on;
  els.all.hidden = on;
  if (on) for (const item of items.values()) item.parts.audio?.pause();
}

function keepInAddress(q) {
  const url = new URL(window.location.href);
  if (q) url.searchParams.set("q", q);
  else url.searchParams.delete("q");
  window.history.replaceState(window.history.state, "", url);
}

async function search(q, { more = false } = {}) {
  q = q.trim();
  const seq = ++searchSeq;
  if (!q) {
    searched = "";
    searchNext = null;
    keepInAddress("");
    showMessage(els.error, "");
    els.search.removeAttribute("aria-invalid");
    showSearch(false);
    return;
  }
  if (q.length > SEARCH_MAX) {
    els.search.setAttribute("aria-invalid", "true");
    showMessage(els.error, `Search for at most ${SEARCH_MAX} characters at a time.`);
    return;
  }
  els.searchMore.disabled = true;
  try {
    const data = await api(searchUrl(q, more && searchNext ? { after: searchNext } : {}));
    if (seq !== searchSeq) return;
    showMessage(els.error, "");
    els.search.removeAttribute("aria-invalid");
    searched = q;
    searchNext = data.next;
    keepInAddress(q);
    const nodes = data.results.map(resultItem);
    if (more) els.resultsList.append(...nodes);
    else els.resultsList.replaceChildren(...nodes);
    const shown = els.resultsList.children.length;
    els.resultsTitle.textContent = shown
      ? `Recordings that mention “${q}”`
      : `No recording mentions “${q}”.`;
    els.status.textContent = shown
      ? `${shown}${searchNext ? " or more" : ""} recording${shown === 1 ? "" : "s"} found.`
      : "No recordings found.";
    els.searchMore.hidden = !searchNext;
    showSearch(true);
  } catch (error) {
    if (seq !== searchSeq) return;
    if (error.status === 400) els.search.setAttribute("aria-invalid", "true");
    showMessage(els.error, `Couldn't search: ${errorMessage(error)}`);
  } finally {
    els.searchMore.disabled = false;
  }
}

els.searchForm.addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(searchTimer);
  search(els.search.value);
});
els.search.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => search(els.search.value), 350);
});
els.search.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && els.search.value) {
    els.search.value = "";
    clearTimeout(searchTimer);
    search("");
  }
});
els.searchMore.addEventListener("click", () => search(searched, { more: true }));

els.owner.addEventListener("change", () => {
  for (const item of items.values()) item.parts.audio?.pause();
  items.clear();
  els.list.replaceChildren();
  next = null;
  load();
  if (searched) search(searched);
});
els.more.addEventListener("click", loadMore);
socket.on("recordings.changed", () => {
  load();
  if (searched) search(searched);
});
socket.on("live", () => load());
socket.on("friends.changed", () => refreshOwners().then(load));
socket.onState((connState, { reconnected }) => {
  if (reconnected) load();
});
load();
const initialQuery = new URLSearchParams(window.location.search).get("q");
if (initialQuery) {
  els.search.value = initialQuery.slice(0, SEARCH_MAX);
  search(els.search.value);
}
