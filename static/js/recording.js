// One recording's page: waveform (precomputed peaks on a canvas) with click-to-seek,
// play/pause, download, and rename/delete for the owner; ?t=seconds starts there.
// Refreshes itself on "recordings.changed" (a rename elsewhere, or the file
// compressed after the end).
import { api, errorMessage } from "./api.js";
import { pageSocket } from "./nav.js";
import { formatDuration, h, readJson, showMessage } from "./ui.js";
import { Waveform } from "./waveform.js";

const socket = pageSocket(); // its subscriptions end when the page is left (nav.js)

const $ = (id) => document.getElementById(id);
const els = {
  title: $("recording-title"),
  duration: $("recording-duration"),
  badges: $("recording-badges"),
  error: $("recording-error"),
  status: $("recording-status"),
  player: $("recording-player"),
  canvas: $("waveform"),
  audio: $("recording-audio"),
  liveNote: $("recording-live-note"),
  play: $("play-button"),
  download: $("download-link"),
  renameButton: $("rename-button"),
  deleteButton: $("delete-button"),
  renameForm: $("rename-form"),
  renameInput: $("rename-input"),
  renameError: $("rename-error"),
  renameCancel: $("rename-cancel"),
  processing: $("recording-processing"),
  redactions: $("recording-redactions"),
  redactionList: $("redaction-list"),
  transcript: $("recording-transcript"),
  transcriptList: $("transcript-list"),
  file: $("recording-file"),
};

let rec = readJson("recording-data", {});
const waveform = new Waveform(els.canvas, els.audio, rec.peaks, rec.duration_s);

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 2 : 1)} MB`;
}

const ENTITY_NAMES = {
  PERSON: "name",
  LOCATION: "place",
  PHONE_NUMBER: "phone number",
  CREDIT_CARD: "card number",
  EMAIL_ADDRESS: "e-mail address",
  STREET_ADDRESS: "street address",
  POSTCODE: "postcode",
  DIGIT_RUN: "number",
  UNKNOWN: "unchecked (muted)",
};

/** A list of timed items ({start|start_s, end|end_s}) that seek the player when clicked. */
function renderTimed(section, list, items, text) {
  const rows = Array.isArray(items) ? items : [];
  section.hidden = rows.length === 0;
  list.replaceChildren(
    ...rows.map((item) => {
      const start = Number(item.start ?? item.start_s ?? 0);
      const button = h("button", { type: "button", class: "cue-time mono" }, formatDuration(start));
      button.addEventListener("click", () => {
        els.audio.currentTime = start;
        els.audio.play().catch(() => {});
      });
      return h("li", {}, button, " ", text(item));
    }),
  );
}

function render() {
  const inProgress = !rec.ended_at;
  els.title.textContent = rec.title || "Untitled";
  document.title = `${rec.title || "Recording"} · Hearth`;
  els.duration.textContent = inProgress ? "recording…" : formatDuration(rec.duration_s);
  els.badges.replaceChildren(
    ...[
      inProgress ? h("span", { class: "badge badge-live" }, "Recording") : null,
      rec.processing?.denoise ? h("span", { class: "badge" }, "Denoised") : null,
      rec.kind === "video" ? h("span", { class: "badge" }, "Video") : null,
    ].filter(Boolean),
  );
  els.processing.textContent = rec.processing?.denoise
    ? `Background noise removed (${rec.processing.model || "DeepFilterNet3"})`
    : "None (the microphone as it was)";
  els.file.textContent = inProgress
    ? "WAV, still being written"
    : `${{ opus: "Ogg/Opus", mp4: "MP4 (H.264 + AAC)" }[rec.format] || "WAV"}, ${megabytes(rec.size_bytes)}`;
  els.player.hidden = inProgress;
  els.play.hidden = inProgress;
  els.download.hidden = inProgress;
  if (els.deleteButton) els.deleteButton.hidden = inProgress;
  els.liveNote.hidden = !inProgress;
  if (inProgress) {
    els.liveNote.replaceChildren(
      "Still recording — it can be played once the broadcast ends.",
      rec.session_id && !rec.is_owner ? h("span", {}, " ", h("a", { href: `/listen/${rec.session_id}/` }, "Listen live")) : null,
    );
  }
  if (els.audio.getAttribute("src") !== rec.audio_url) {
    // The file changed (WAV → Ogg/Opus): carry the position and play state over.
    const at = els.audio.currentTime;
    const playing = !els.audio.paused;
    els.audio.src = rec.audio_url;
    els.audio.addEventListener("loadedmetadata", () => {
      els.audio.currentTime = at;
      if (playing) els.audio.play().catch(() => {});
    }, { once: true });
  }
  renderTimed(els.transcript, els.transcriptList, rec.transcript, (cue) => cue.text);
  renderTimed(els.redactions, els.redactionList, rec.redactions, (r) =>
    `${ENTITY_NAMES[r.entity] || r.entity.toLowerCase().replaceAll("_", " ")}` +
    (r.detector ? ` (${Math.round(r.confidence * 100)}%, ${r.detector})` : ""),
  );
  if (rec.processing?.bleep_pii) {
    els.processing.textContent += `; personal information ${rec.processing.bleep_pii === "tone" ? "bleeped" : "silenced"} (${rec.processing.delay_s} s delay)`;
  }
  waveform.peaks = Array.isArray(rec.peaks) ? rec.peaks : [];
  waveform.durationS = rec.duration_s;
  waveform.draw();
}

async function refresh() {
  try {
    rec = await api(`/api/recordings/${encodeURIComponent(rec.id)}`);
    showMessage(els.error, "");
    render();
  } catch (error) {
    if (error.status === 404) {
      deleted();
    } else {
      showMessage(els.error, `Couldn't refresh the recording: ${errorMessage(error)}`);
    }
  }
}

els.play.addEventListener("click", () => {
  if (els.audio.paused) els.audio.play().catch((error) => showMessage(els.error, errorMessage(error)));
  else els.audio.pause();
});
const playLabel = () => {
  els.play.textContent = els.audio.paused ? "Play" : "Pause";
};
els.audio.addEventListener("play", playLabel);
els.audio.addEventListener("pause", playLabel);

function renameOpen(open) {
  els.renameForm.hidden = !open;
  els.renameButton.hidden = open;
  showMessage(els.renameError, "");
  if (open) {
    els.renameInput.value = rec.title;
    els.renameInput.focus();
    els.renameInput.select();
  } else {
    els.renameButton.focus();
  }
}

if (els.renameForm) {
  els.renameButton.addEventListener("click", () => renameOpen(true));
  els.renameCancel.addEventListener("click", () => renameOpen(false));
  els.renameInput.addEventListener("keydown", (event) => {
    if (event.key === "Escape") renameOpen(false);
  });
  els.renameForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = els.renameInput.value.trim();
    if (!title) {
      showMessage(els.renameError, "Enter a title.");
      return;
    }
    const submit = els.renameForm.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      rec = await api(`/api/recordings/${encodeURIComponent(rec.id)}`, { method: "PATCH", body: { title } });
      render();
      renameOpen(false);
      els.status.textContent = `Renamed to “${rec.title}”.`;
    } catch (error) {
      showMessage(els.renameError, errorMessage(error));
    } finally {
      submit.disabled = false;
    }
  });
}

if (els.deleteButton) {
  els.deleteButton.addEventListener("click", async () => {
    if (!window.confirm(`Delete “${rec.title}”? This cannot be undone.`)) return;
    els.deleteButton.disabled = true;
    try {
      await api(`/api/recordings/${encodeURIComponent(rec.id)}`, { method: "DELETE" });
      els.audio.pause();
      window.location.assign("/recordings/");
    } catch (error) {
      showMessage(els.error, errorMessage(error));
      els.deleteButton.disabled = false;
    }
  });
}

function deleted() {
  showMessage(els.error, "This recording has been deleted.");
  els.audio.pause();
  for (const el of [els.player, els.play, els.download, els.renameButton, els.deleteButton, els.renameForm]) {
    if (el) el.hidden = true;
  }
}

socket.on("recordings.changed", (message) => {
  if ((message.deleted || []).includes(rec.id)) deleted();
  else refresh();
});
socket.onState((state, { reconnected }) => {
  if (reconnected) refresh();
});
render();

// Opened from a transcript search result (?t=seconds): the player starts at that
// moment (it does not play by itself; autoplay is the browser's call).
const startAt = Number(new URLSearchParams(window.location.search).get("t"));
if (Number.isFinite(startAt) && startAt > 0 && !els.player.hidden) {
  const seek = () => {
    const end = Number.isFinite(els.audio.duration) ? els.audio.duration : startAt;
    els.audio.currentTime = Math.min(startAt, end);
    waveform.draw();
  };
  if (els.audio.readyState >= 1) seek();
  else els.audio.addEventListener("loadedmetadata", seek, { once: true });
  els.status.textContent = `Ready to play from ${formatDuration(startAt)}.`;
}
