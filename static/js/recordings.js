// Recordings: the user's own and friends', newest first, a page at a time ("Show
// more"), filtered by who broadcast, with a player each and a link to each
// recording's page. Owners can rename (inline form, PATCH) and delete (confirm,
// DELETE). The list refreshes on "recordings.changed" and when a friend goes live
// or stops ("live"), without interrupting a playing item. Times are the server's
// labels (one format everywhere, see streams/when.py).
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

els.owner.addEventListener("change", () => {
  for (const item of items.values()) item.parts.audio?.pause();
  items.clear();
  els.list.replaceChildren();
  next = null;
  load();
});
els.more.addEventListener("click", loadMore);
socket.on("recordings.changed", () => load());
socket.on("live", () => load());
socket.on("friends.changed", () => refreshOwners().then(load));
socket.onState((connState, { reconnected }) => {
  if (reconnected) load();
});
load();
