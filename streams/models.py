"""Live sessions and their recordings."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class LiveSession(models.Model):
    """One broadcast by ``broadcaster``; live while ``ended_at`` is null.

    ``owner_channel`` is the channel-layer name of the daphne process that holds the
    broadcaster's peer connection: listeners' SDP offers are routed there.
    ``listeners`` is the current listener count as that process last stored it, so
    every process can report it.
    ``heartbeat_at`` is stamped by that process; a session whose stamp is older than
    ``HEARTH["SESSION_STALE_S"]`` lost its process. Readers (the selectors) only ignore
    such a session; it is ended (reason ``"lost"``) by the owner-less cleanup in a media
    server's housekeeping loop (about every 30 s), or when the same user goes live
    again, unless its recording file was written to within that window (then its
    owner is alive, only slow to stamp).
    """

    broadcaster = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="live_sessions"
    )
    title = models.CharField(max_length=120, blank=True)
    denoise = models.BooleanField(default=True)
    owner_channel = models.CharField(max_length=255)
    started_at = models.DateTimeField(auto_now_add=True)
    heartbeat_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=40, blank=True)
    listeners = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["broadcaster"],
                condition=Q(ended_at__isnull=True),
                name="one_live_session_per_broadcaster",
            )
        ]
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.broadcaster} live #{self.pk}"

    @property
    def is_live(self) -> bool:
        """True until the session ends."""
        return self.ended_at is None


class Recording(models.Model):
    """The processed audio of one live session, 48 kHz mono.

    ``file`` is relative to ``MEDIA_ROOT``: a 16-bit PCM WAV while live (crash-safe),
    then, once finalised and compressed (``HEARTH["RECORDING_COMPRESS"]``), an
    Ogg/Opus file (``.ogg``). ``processing`` records the processor settings the audio
    went through (``{"denoise": true, "model": ...}``). ``ended_at``/``duration_s``
    (seconds, always measured on the WAV) are set when the file is finalised;
    ``size_bytes`` is the stored file's size. ``peaks`` is the waveform, stored at
    compression (or, for a WAV kept uncompressed, at its first view): min/max pairs
    flattened (``[min0, max0, ...]``, integers in [-1000, 1000], see
    ``streams.recording.wav_peaks``); empty until then.
    """

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="recordings"
    )
    session = models.OneToOneField(
        LiveSession, on_delete=models.SET_NULL, null=True, blank=True, related_name="recording"
    )
    title = models.CharField(max_length=120)
    file = models.FileField(upload_to="recordings/", max_length=255)
    sample_rate = models.PositiveIntegerField(default=48_000)
    processing = models.JSONField(default=dict)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_s = models.FloatField(default=0.0)
    size_bytes = models.PositiveBigIntegerField(default=0)
    peaks = models.JSONField(default=list, blank=True)
    # The redacted transcript of a broadcast with "bleep personal info" on: cues
    # [{"start": s, "end": s, "text": "... [phone number] ..."}] (seconds into the
    # recording); personal information only ever appears as a mask.
    transcript = models.JSONField(default=list, blank=True)
    # "audio" (WAV / Ogg-Opus) or "video" (MP4: H.264 + AAC). Video recordings also
    # keep how they were redacted: the settings (blur_faces/blur_plates/blur_text, None
    # for audio) and counts over the whole file (frames processed, face, plate and
    # on-screen personal-text regions blurred summed over frames, frames blurred whole
    # because detection failed or was stale: fail closed). Never image data.
    kind = models.CharField(max_length=8, default="audio")
    blur_faces = models.BooleanField(null=True, blank=True)
    blur_plates = models.BooleanField(null=True, blank=True)
    blur_text = models.BooleanField(null=True, blank=True)
    frames_processed = models.PositiveIntegerField(default=0)
    faces_blurred = models.PositiveIntegerField(default=0)
    plates_blurred = models.PositiveIntegerField(default=0)
    text_blurred = models.PositiveIntegerField(default=0)
    frames_failed_closed = models.PositiveIntegerField(default=0)
    # What transcript search reads: the cues' text with every mask ("[phone number]",
    # "[…]") taken out, so only words that were heard in clear are searchable.
    # Derived from ``transcript`` (streams.services.transcript_search_text); on
    # PostgreSQL an expression GIN index over its English tsvector serves the search.
    transcript_text = models.TextField(default="", blank=True, editable=False)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return self.title

    @property
    def is_compressed(self) -> bool:
        """True once the file is the Ogg/Opus one (the WAV is gone or about to be)."""
        return self.file.name.endswith(".ogg")

    @property
    def is_video(self) -> bool:
        """True for an MP4 (H.264 + AAC) recording."""
        return self.kind == "video"


class UploadJob(models.Model):
    """A file a user uploaded to be processed into a recording ("Upload & process").

    ``source`` (relative to ``MEDIA_ROOT``) is the uploaded file, deleted once the job
    ends. ``options`` are the user's choices (``{"blur_faces": bool, "blur_plates":
    bool, "blur_text": bool, "denoise": bool}``; ``blur_text`` absent: false).
    ``status`` goes ``queued`` → ``running`` → ``done``
    (``recording`` set) or ``failed`` (``error``: a sentence for the user).
    ``progress`` is the fraction processed, 0.0-1.0. ``updated_at`` moves with every
    change: the web process relays changed rows to the owner's pages.
    """

    QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="upload_jobs"
    )
    title = models.CharField(max_length=120)
    source = models.CharField(max_length=255)
    kind = models.CharField(max_length=8)  # "audio" or "video", from the probe
    duration_s = models.FloatField(default=0.0)
    options = models.JSONField(default=dict)
    status = models.CharField(max_length=8, default=QUEUED)
    progress = models.FloatField(default=0.0)
    error = models.CharField(max_length=300, blank=True)
    recording = models.ForeignKey(
        Recording, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"upload #{self.pk} {self.status}"


class MediaWorker(models.Model):
    """A process that holds broadcasters' peer connections (a media worker).

    Every media worker (``manage.py mediaworker``, or the one inside daphne when
    ``HEARTH["MEDIA_IN_PROCESS"]``) keeps one row while it runs: ``channel_name`` is
    its channel-layer name (go-lives and listens are routed there, and it becomes the
    ``owner_channel`` of the sessions it holds); ``capacity`` is how many broadcasts
    it takes; ``sessions`` how many it holds now (stamped with ``heartbeat_at`` every
    ``HEARTH["WORKER_HEARTBEAT_S"]``, and raised by one by each placement in
    between). A row not stamped for ``HEARTH["WORKER_STALE_S"]`` is a dead worker:
    its sessions are ended and the row deleted by any process's housekeeping.
    ``host``/``pid`` are for operators only.
    """

    channel_name = models.CharField(max_length=255, unique=True)
    host = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(default=0)
    capacity = models.PositiveIntegerField()
    sessions = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True)
    heartbeat_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"media worker {self.host}:{self.pid} ({self.sessions}/{self.capacity})"


class RedactionEvent(models.Model):
    """One bleep (or mute) in a recording, for its owner's audit trail.

    Times are seconds into the recording. ``entity`` is the PII label (e.g.
    ``PHONE_NUMBER``) or ``UNCHECKED`` for audio muted because the analysis had not
    decided it in time (fail closed); ``detector`` names what found it. Never the
    recognised text or any audio.
    """

    recording = models.ForeignKey(Recording, on_delete=models.CASCADE, related_name="redactions")
    start_s = models.FloatField()
    end_s = models.FloatField()
    entity = models.CharField(max_length=40)
    confidence = models.FloatField(default=0.0)
    detector = models.CharField(max_length=80, blank=True)

    class Meta:
        ordering = ["recording", "start_s"]

    def __str__(self) -> str:
        return f"{self.entity} {self.start_s:.2f}-{self.end_s:.2f} s"
