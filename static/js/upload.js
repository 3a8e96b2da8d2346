// Upload & process: send the file (multipart POST /api/uploads), then follow the
// job's progress from the "upload.progress" events on the page's socket (the
// server relays the task worker's progress) until it is done (link to the new
// recording) or failed (the reason). The job's state is fetched again whenever
// the socket (re)connects, so a missed event never leaves a stale bar; an
// unfinished job from an earlier visit is shown again.
import { ApiError, api, errorMessage } from "./api.js";
import { pageSocket } from "./nav.js";
import { readJson, showMessage } from "./ui.js";

const socket = pageSocket();
const $ = (id) => document.getElementById(id);
const els = {
  form: $("upload-form"),
  file: $("upload-file"),
  submit: $("upload-submit"),
  error: $("upload-error"),
  job: $("upload-job"),
  bar: $("upload-progress"),
  status: $("upload-status"),
  link: $("upload-recording-link"),
};
// A job still queued or running from an earlier visit is followed again.
const current = readJson("upload-current", null);
let jobId = current ? current.id : null;

function csrf() {
  return els.form.querySelector("input[name=csrfmiddlewaretoken]")?.value ?? "";
}

function show(job) {
  if (job.id !== jobId) return;
  els.job.hidden = false;
  const percent = Math.round(job.progress * 100);
  els.bar.value = percent;
  if (job.status === "queued") els.status.textContent = "Waiting for the processor…";
  else if (job.status === "running") els.status.textContent = `Processing… ${percent}%`;
  else if (job.status === "failed") {
    els.status.textContent = job.error || "Processing failed.";
    els.submit.disabled = false;
  } else if (job.status === "done") {
    els.bar.value = 100;
    els.status.textContent = `Done: “${job.title}” is in your recordings.`;
    els.link.href = job.recording_url;
    els.link.hidden = false;
    els.submit.disabled = false;
  }
}

async function refresh() {
  if (jobId === null) return;
  try {
    const data = await api(`/api/uploads/${jobId}`);
    show(data.upload);
  } catch (error) {
    console.warn("Hearth: upload state:", error);
  }
}

if (current) show(current);
socket.on("upload.progress", (event) => show(event));
socket.onState((state) => {
  if (state === "open") refresh();
});

els.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showMessage(els.error, "");
  if (!els.file.files.length) {
    showMessage(els.error, "Choose a file to upload.");
    els.file.focus();
    return;
  }
  els.submit.disabled = true;
  els.link.hidden = true;
  els.job.hidden = false;
  els.bar.value = 0;
  els.status.textContent = "Uploading…";
  try {
    const response = await fetch("/api/uploads", {
      method: "POST",
      body: new FormData(els.form),
      headers: { Accept: "application/json", "X-CSRFToken": csrf() },
      credentials: "same-origin",
    });
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(data?.error || `The server answered ${response.status}.`);
    jobId = data.upload.id;
    show(data.upload);
    refresh(); // events sent before jobId was known
  } catch (error) {
    els.job.hidden = true;
    els.submit.disabled = false;
    showMessage(els.error, errorMessage(error));
  }
});
