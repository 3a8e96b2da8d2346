"""The aiortc media server: a media worker's broadcasts, or a web process's housekeeping.

A media worker (:class:`MediaServer` with ``worker=True``: ``manage.py mediaworker``,
or inside daphne when ``HEARTH["MEDIA_IN_PROCESS"]``) owns the peer connections of
the broadcasts placed on it, and listens on its own channel-layer channel
(``MediaServer.channel_name``, its ``MediaWorker`` row, and the ``owner_channel`` of
its ``LiveSession`` rows). A page's consumer, on whichever web process, places a
go-live on the least-loaded worker (``rtc.broadcast.start``), and authorises a
listener and forwards its SDP offer to the session's owner (``rtc.listen.start``);
the worker answers back to the consumer's channel. With Redis as the channel layer
this routes signaling between processes and machines.

ICE: ``settings.ICE_SERVERS`` is always passed (default ``[]``): aiortc adds
Google's public STUN server when given none. ``settings.ICE_HOST_ADDRESSES``
restricts the host candidates aioice gathers (e.g. to ``127.0.0.1`` in tests,
which aioice otherwise never offers).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from project.logs import log_context_set
from project.metrics import broadcast_ended_count, broadcast_started_count
from streams import selectors, services
from streams.ice import ice_host_addresses_apply
from streams.media.controls import DenoiseSwitchStage, MuteStage
from streams.media.detectors import HaarPlateDetector, face_detector_build
from streams.media.graph import Graph, GraphRunner, TrackSource
from streams.media.items import SAMPLE_RATE, Event
from streams.media.live_pii import LivePii
from streams.media.metrics import MediaMetrics, StageTimer
from streams.media.mp4_live import LiveVideoRecording, mp4_duration_s
from streams.media.relay import OpusEncoder, Relay, RelaySink, RelayTrack
from streams.media.sinks import RecorderSink
from streams.media.text import text_detector_build
from streams.media.video_live import (
    FrameRateMeter,
    VideoRelaySink,
    VideoTrackSource,
    Vp8Encoder,
    live_redaction_stages,
)
from streams.media.workers import Workers
from streams.pii_setup import build_analyser
from streams.processors.denoise import ALGORITHMIC_DELAY_SAMPLES
from streams.processors.factory import audio_chain_build
from streams.recording import RecordingInfo, WavRecorder
from streams.sdp import OfferError, Role, candidates_filter, deny_networks_parse, offer_check
from users.events import layer_call, user_group
from users.models import User
from users.selectors import avatar_url, friend_ids
from users.services import presence_prune

logger = logging.getLogger("hearth.rtc")

SHUTDOWN_TIMEOUT_S = 15.0  # at most this long finalising broadcasts on SIGTERM/SIGINT
LOOP_LAG_PROBE_S = 0.1  # the event-loop lag probe's sleep
CLOSE_DRAIN_S = 10.0  # at most this long for a closing room's graph to flush and drain
LIVE_YUNET_THRESHOLD = 0.3
"""YuNet's score threshold on a live camera (0.5 on files): frames arrive VP8-compressed
at a few hundred kb/s, which lowers face scores. Measured on a 640x480 pan of
``city.jpg`` through libvpx at 500 kb/s (the browser's starting rate): at 0.5 the redacted
frames still held faces CenterFace scored 0.53-0.55; at 0.3 with the recheck pass, none
at CenterFace >= 0.3 or YuNet >= 0.45."""
VIDEO_COUNTS_S = 10.0  # how often a camera broadcast stores its redaction counts (crash repair)


class SignalingError(Exception):
    """An SDP exchange that cannot go on; ``code`` for machines, str() for people."""

    def __init__(self, message: str, *, code: str = "bad_sdp") -> None:
        super().__init__(message)
        self.code = code


def ice_configuration() -> RTCConfiguration:
    """``RTCConfiguration`` from ``settings.ICE_SERVERS`` (never aiortc's default list)."""
    servers = []
    for entry in settings.ICE_SERVERS:
        if isinstance(entry, dict) and entry.get("urls"):
            servers.append(
                RTCIceServer(
                    urls=entry["urls"],
                    username=entry.get("username"),
                    credential=entry.get("credential"),
                )
            )
    return RTCConfiguration(iceServers=servers)


def sdp_validate(sdp: object) -> str:
    """Check an SDP offer from a client before aiortc parses it.

    Raises:
        SignalingError: not a string, over ``HEARTH["MAX_SDP_BYTES"]``, not SDP
            (``v=0`` first line, RFC 8866 §5), or without an audio media section.
    """
    if not isinstance(sdp, str) or not sdp.strip():
        raise SignalingError("Missing SDP offer.")
    if len(sdp.encode()) > settings.HEARTH["MAX_SDP_BYTES"]:
        raise SignalingError(
            f"SDP offer too large (limit {settings.HEARTH['MAX_SDP_BYTES']} bytes).",
            code="sdp_too_large",
        )
    if not sdp.lstrip().startswith("v=0"):
        raise SignalingError("Not an SDP offer (it must start with v=0).")
    if "\nm=audio " not in sdp.replace("\r\n", "\n"):
        raise SignalingError("The SDP offer has no audio track.")
    return sdp


@dataclass
class _Listener:
    pc: RTCPeerConnection
    track: RelayTrack
    user_id: int
    connected: asyncio.Event
    pending: bool = True  # holds one of its user's MAX_PENDING_LISTENS_PER_USER slots
    watchdog: asyncio.Task[None] | None = None
    video_track: RelayTrack | None = None  # the redacted camera, when the broadcast has one


def _transceivers_limit(
    pc: RTCPeerConnection, *, receive: tuple[Any, ...] = (), send: tuple[Any, ...] = ()
) -> None:
    """Answer ``inactive`` for every media section Hearth does not use.

    ``receive`` are the receiver tracks kept (the broadcaster's microphone, and camera
    when it sends one), ``send`` the tracks sent (a listener's relay tracks). Any other
    section — a second camera or microphone, a listener's own microphone — is answered
    ``inactive`` (RFC 8829 §5.3.1, direction intersection), so aiortc never starts its
    receiver: nothing is received, decoded or kept for it.
    """
    for transceiver in pc.getTransceivers():
        if transceiver.sender.track is not None and transceiver.sender.track in send:
            transceiver.direction = "sendonly"
        elif transceiver.receiver.track is not None and transceiver.receiver.track in receive:
            transceiver.direction = "recvonly"
        else:
            transceiver.direction = "inactive"


def _vp8_only(transceiver: Any) -> None:
    """Make a listener's video section negotiate VP8 (and its RTX), the codec of the
    relay's one shared encoder (:class:`Vp8Encoder`); every WebRTC browser decodes it
    (RFC 7742 §5).

    Raises:
        SignalingError: the listener's offer has no VP8.
    """
    codecs = [
        codec
        for codec in RTCRtpSender.getCapabilities("video").codecs
        if codec.mimeType.lower() in ("video/vp8", "video/rtx")
    ]
    transceiver.setCodecPreferences(codecs)


def receiver_reorder_window_set(receiver: Any, *, frames: int) -> bool:
    """Hold at most ``frames`` frames in an aiortc audio receiver's reorder buffer.

    aiortc 1.16 (``rtcrtpreceiver.py``) gives every audio receiver
    ``JitterBuffer(capacity=16, prefetch=4)``: a frame is decoded only once 4 later
    frames have arrived, a fixed 80 ms. That buffer does not absorb timing jitter (it
    releases on packet arrival, not on a clock); it only lets late packets be put back
    in order. The server never plays audio out, so it keeps a short reorder window and
    leaves jitter to the listeners' playout buffers. Call before packets arrive.
    The buffer is a name-mangled private attribute of the pinned aiortc version; if it
    is missing (an upgrade), nothing changes and False is returned (logged).
    """
    attribute = "_RTCRtpReceiver__jitter_buffer"
    current = getattr(receiver, attribute, None)
    if not isinstance(current, JitterBuffer):
        logger.warning("aiortc receiver has no %s; keeping its reorder window", attribute)
        return False
    setattr(receiver, attribute, JitterBuffer(capacity=current.capacity, prefetch=frames))
    return True


class BroadcastRoom:
    """One live session on this process: the broadcaster's peer connection, the media
    graph (denoise stage → recorder + relay), and one peer connection per listener.

    Every resource is owned by the room from the moment it exists, so :meth:`close`
    releases it whatever step of :meth:`open` failed.
    """

    def __init__(
        self,
        *,
        server: MediaServer,
        session_id: int,
        broadcaster_id: int,
        denoise: bool,
        recording_file: Path,
        owner_page: str | None = None,
        bleep: str = "",
        delay_s: float = 3.0,
        blur_faces: bool = True,
        blur_plates: bool = True,
        blur_text: bool = False,
    ) -> None:
        self.server = server
        # Camera redaction, used when the offer sends video: faces and licence plates
        # blurred on the server before anyone receives a frame.
        self.blur_faces = blur_faces
        self.blur_plates = blur_plates
        self.blur_text = blur_text  # on-screen e-mails, phone and card numbers (OCR)
        self.video_metrics = MediaMetrics()
        self._video_rate = FrameRateMeter()
        self.video_relay: Relay | None = None
        self.video_runner: GraphRunner | None = None
        self.video_source: VideoTrackSource | None = None  # swapped by reconnect()
        self._video_task: asyncio.Task[None] | None = None
        self._video_stages: list[Any] = []
        # A camera broadcast is recorded as MP4 (redacted video + the listeners' audio)
        # beside the WAV, which it replaces once finished (see close()).
        self.video_recording: LiveVideoRecording | None = None
        self.video_info: services.VideoRecordingInfo | None = None
        self._video_counts_task: asyncio.Task[None] | None = None
        # "tone"/"silence": spoken personal information is bleeped (or silenced)
        # behind a delay line of delay_s seconds; "" off.
        self.bleep = bleep
        self.delay_s = delay_s
        self.pii: LivePii | None = None
        self._pii_task: asyncio.Task[None] | None = None
        self.captions: list[dict[str, object]] = []  # cues sent so far (the transcript)
        self.owner_page = owner_page  # the broadcaster page's channel, when known
        self.session_id = session_id
        self.broadcaster_id = broadcaster_id
        self.denoise = denoise
        self.recording_file = recording_file
        self.pc: RTCPeerConnection | None = None
        self.metrics = MediaMetrics()
        self.mute = MuteStage()
        self.stage: DenoiseSwitchStage | None = None
        self._published_names: tuple[int, ...] = ()  # listener ids last told to the page
        self.recorder_sink: RecorderSink | None = None
        self.relay: Relay | None = None
        self.runner: GraphRunner | None = None
        self.listeners: dict[str, _Listener] = {}
        self._task: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._limits_task: asyncio.Task[None] | None = None
        self._published_listeners = 0  # the count last stored and sent
        self._grace_task: asyncio.Task[None] | None = None  # see detach()
        self._media_task: asyncio.Task[None] | None = None  # see media_lost()
        self.source: TrackSource | None = None
        self.reconnects = 0  # broadcaster peer connections replaced (reconnect())
        self.closing = False
        self._open_done = asyncio.Event()  # cleared while open() runs
        self._open_done.set()

    async def open(self, offer_sdp: str) -> str:
        """Answer the broadcaster's SDP offer and start the graph on its audio track.

        A :meth:`close` that starts meanwhile waits for this to return; this gives up
        (``not_live``) at its next step instead of creating more.

        Raises:
            SignalingError: unusable offer, no audio track in it, or ``not_live`` when
                the broadcast was stopped while opening.
            ProcessorError, OSError: the denoiser or the recording file cannot be made.
        """
        self._open_done.clear()
        try:
            return await self._open(offer_sdp)
        finally:
            self._open_done.set()

    def _pii_build(self) -> LivePii:
        """The live bleeping branch of this broadcast (load pool: loads the models).

        Raises:
            ModelIntegrityError, OSError: the Whisper files are missing or corrupt.
        """
        return LivePii(
            lambda timeline: build_analyser(timeline, live=True, keep_transcript=True),
            delay_s=self.delay_s,
            bleep_tone=self.bleep == "tone",
        )

    def _still_opening(self) -> None:
        if self.closing:
            raise SignalingError("This broadcast was stopped.", code="not_live")

    async def _open(self, offer_sdp: str) -> str:
        loop = asyncio.get_running_loop()
        workers = self.server.workers
        # The denoise stage always delays by DeepFilterNet3's latency, so it can be
        # switched on and off live without moving the timeline; a broadcast that
        # starts without denoise loads the model only when it is switched on.
        self.stage = DenoiseSwitchStage(
            None, latency=ALGORITHMIC_DELAY_SAMPLES, enabled=self.denoise
        )
        if self.denoise:
            chain = await loop.run_in_executor(
                workers.load, functools.partial(audio_chain_build, denoise=True)
            )
            self.stage.processor_set(chain)
        self._still_opening()
        if self.bleep:
            # Whisper + spaCy load once per process (cached); each broadcast gets its
            # own analyser, thread, timeline and delay line.
            self.pii = await loop.run_in_executor(workers.load, self._pii_build)
            self._still_opening()
        recorder = await loop.run_in_executor(workers.io, WavRecorder, self.recording_file)
        self.recorder_sink = RecorderSink(recorder, workers.io, on_failed=self._on_recorder_failed)
        self._still_opening()
        self.relay = Relay(
            encoder=OpusEncoder(),
            executor=workers.encode,
            metrics=self.metrics,
            per_listener=settings.HEARTH["RELAY_ENCODE"] == "per_listener",
        )
        self.pc = pc = RTCPeerConnection(ice_configuration())
        connected = asyncio.Event()
        self._broadcaster_watch(pc, connected)
        audio, camera = await self._broadcaster_answer(pc, offer_sdp)
        self._still_opening()
        if camera is not None:
            self._video_stages = await loop.run_in_executor(workers.load, self._video_stages_build)
            self._still_opening()
            self.video_relay = Relay(
                encoder=Vp8Encoder(), executor=workers.encode, metrics=self.video_metrics
            )
            self.video_recording = LiveVideoRecording(
                services.recording_fragments_path(self.recording_file), executor=workers.io
            )
            await database_sync_to_async(services.recording_video_expect)(
                session_id=self.session_id,
                blur_faces=self.blur_faces,
                blur_plates=self.blur_plates,
                blur_text=self.blur_text,
            )
            self._still_opening()
        self._start_graph(audio)
        if camera is not None:
            self._start_video_graph(camera)
        self._connect_task = asyncio.ensure_future(self._connect_deadline(connected))
        return pc.localDescription.sdp

    def _broadcaster_watch(self, pc: RTCPeerConnection, connected: asyncio.Event) -> None:
        """Follow the broadcaster's peer connection ``pc`` while it is the room's: once
        connected, the limits run; failed or closed, the media is lost
        (:meth:`media_lost`). A connection replaced by :meth:`reconnect` is ignored."""

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is not self.pc or self.closing:
                return
            if pc.connectionState == "connected":
                connected.set()
                self._media_back()
                if self._limits_task is None:
                    self._limits_task = asyncio.ensure_future(self._limits_loop())
            if pc.connectionState in ("failed", "closed"):
                self.media_lost(f"its peer connection {pc.connectionState}")

    async def _broadcaster_answer(
        self, pc: RTCPeerConnection, offer_sdp: str, *, video: bool = True
    ) -> tuple[Any, Any | None]:
        """Apply the broadcaster's offer to ``pc`` and answer it; returns the audio track
        and the camera's track (None when the offer sends no video, or ``video`` is
        False: a camera is then answered ``inactive``, never received).

        Raises:
            SignalingError: unusable offer, or one that sends no audio.
        """
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError/KeyError/... on malformed SDP
            logger.info("unusable SDP offer (%s)", type(exc).__name__)  # no SDP in logs
            raise SignalingError("The SDP offer could not be used.") from exc
        self._still_opening()
        receiver = next(
            (
                t.receiver
                for t in pc.getTransceivers()
                if t.kind == "audio" and t.receiver.track is not None
            ),
            None,
        )
        if receiver is None:
            raise SignalingError("The SDP offer sends no audio (is the microphone track added?).")
        audio = receiver.track
        camera = next(
            (
                t.receiver.track
                for t in pc.getTransceivers()
                if video and t.kind == "video" and t.receiver.track is not None
            ),
            None,
        )
        _transceivers_limit(pc, receive=(audio, camera) if camera is not None else (audio,))
        receiver_reorder_window_set(receiver, frames=settings.HEARTH["RECEIVE_REORDER_FRAMES"])
        await pc.setLocalDescription(await pc.createAnswer())
        return audio, camera

    # -- the broadcaster's media path: lost, then reconnected (no ICE restart) ------
    def media_lost(self, why: str) -> None:
        """The broadcaster's media stopped (its peer connection failed or closed, or its
        track ended): keep the broadcast ``MEDIA_RECONNECT_S`` for the page to send a
        fresh offer (:meth:`reconnect`); end it (``disconnected``) if none connects.
        The timeline goes on: the recording gets the gap as silence. ``0`` ends it at
        once. Idempotent while a wait runs."""
        if self.closing:
            return
        hold = settings.HEARTH["MEDIA_RECONNECT_S"]
        if hold <= 0:
            self.server.broadcast_stop_soon(self.session_id, reason="disconnected")
            return
        if self._media_task is not None and not self._media_task.done():
            return
        logger.info(
            "session %s: broadcaster media lost (%s); %.1f s to reconnect",
            self.session_id,
            why,
            hold,
        )
        self._media_task = asyncio.ensure_future(self._media_wait_end(hold))

    async def _media_wait_end(self, hold: float) -> None:
        await asyncio.sleep(hold)
        if not self.closing:
            logger.info("session %s: media not reconnected within %.1f s", self.session_id, hold)
            self.server.broadcast_stop_soon(self.session_id, reason="disconnected")

    def _media_back(self) -> None:
        if self._media_task is not None and self._media_task is not asyncio.current_task():
            self._media_task.cancel()
        self._media_task = None

    async def reconnect(self, offer_sdp: str) -> str:
        """Replace the broadcaster's peer connection with a new one from its fresh SDP
        offer (the page's answer to an ICE failure: aiortc 1.16 cannot restart ICE);
        returns the SDP answer.

        The new connection's audio feeds the same graph (:meth:`TrackSource.replace`),
        so denoise, listeners and the recording go on: one file, the gap as silence.
        A camera broadcast's new camera track feeds the same redaction graph
        (:meth:`VideoTrackSource.replace`): listeners get redacted frames again on
        their own connections, the MP4 goes on (the last frame held over the gap);
        nothing is sent during the gap. A camera on the new connection of a broadcast
        without one is answered ``inactive``.
        The old connection is closed. The broadcast ends (``disconnected``) unless the
        new one connects within ``MEDIA_RECONNECT_S``.

        Raises:
            SignalingError: ``not_live`` when the broadcast is not (or no longer)
                running, ``unavailable`` when reconnecting is off
                (``MEDIA_RECONNECT_S`` 0), or an unusable offer.
        """
        if self.closing or self.source is None:
            raise SignalingError("This broadcast has ended.", code="not_live")
        if settings.HEARTH["MEDIA_RECONNECT_S"] <= 0:
            raise SignalingError(
                "Reconnecting a broadcast is turned off on this server.", code="unavailable"
            )
        pc = RTCPeerConnection(ice_configuration())
        try:
            self._broadcaster_watch(pc, asyncio.Event())
            audio, camera = await self._broadcaster_answer(
                pc, offer_sdp, video=self.video_source is not None
            )
            self._still_opening()
        except BaseException:
            await pc.close()
            raise
        old, self.pc = self.pc, pc
        self.reconnects += 1
        self.media_lost("reconnecting")  # the new connection has that long to connect
        self.source.replace(audio)
        if camera is not None and self.video_source is not None:
            self.video_source.replace(camera)
        logger.info("session %s: broadcaster reconnected (new peer connection)", self.session_id)
        if old is not None:
            self.server.spawn(old.close())
        return pc.localDescription.sdp

    def _video_stages_build(self) -> list[Any]:
        """The camera's redaction stages (load pool: loads the detectors).

        Raises:
            ModelIntegrityError, DetectorUnavailable: a detector cannot be loaded.
        """
        hearth = settings.HEARTH
        face = None
        if self.blur_faces:
            model_dir = Path(hearth["MODEL_DIR"]) if hearth["MODEL_DIR"] else None
            face = face_detector_build(
                model_dir=model_dir,
                device=hearth["VIDEO_DEVICE"],
                yunet_threshold=LIVE_YUNET_THRESHOLD,
            )
        plate = HaarPlateDetector() if self.blur_plates else None
        text = None
        if self.blur_text:
            text = text_detector_build(
                device=hearth["VIDEO_DEVICE"], text=True, plates=self.blur_plates
            )
        return live_redaction_stages(
            face=face, plate=plate, text=text, stale_s=hearth["VIDEO_STALE_S"]
        )

    def _start_video_graph(self, track: Any) -> None:
        """Run the camera through the redaction stages into the video relay.

        Detection runs in the stream's own worker thread with ``PROCESS_DEADLINE_S``
        (a detector that overruns it is abandoned: every later frame leaves fully
        blurred); a frame that waited over ``VIDEO_STALE_S`` since it arrived skips
        detection and leaves fully blurred. Both are counted in ``video_metrics``.
        """
        assert self.video_relay is not None
        # A bleeped broadcast's audio leaves through a delay line of delay_s: the
        # picture is held as long, so that it does not lead the sound.
        delay = self.delay_s if self.bleep else 0.0
        sink = VideoRelaySink(self.video_relay, delay_s=delay)
        sinks: list[Any] = [sink]
        if self.video_recording is not None:
            sinks.append(self.video_recording.video_sink())
        graph = Graph(stages=self._video_stages, sinks=sinks)
        # Kept MEDIA_RECONNECT_S when the camera's track ends, for reconnect().
        self.video_source = VideoTrackSource(track, hold_s=settings.HEARTH["MEDIA_RECONNECT_S"])
        self.video_runner = GraphRunner(
            graph,
            self.video_source,
            workers=self.server.workers,
            name=f"session{self.session_id}-video",
            deadline_s=settings.HEARTH["PROCESS_DEADLINE_S"],
            max_lag_s=settings.HEARTH["VIDEO_STALE_S"],
            metrics=self.video_metrics,
            on_event=self._on_video_event,
        )
        self._video_task = asyncio.ensure_future(self.video_runner.run())
        if self.video_recording is not None:
            self._video_counts_task = asyncio.ensure_future(self._video_counts_loop())

    def _on_video_event(self, event: Event) -> None:
        """The camera graph's events (never the audio's PII branch): a detector that
        stalled is logged; its frames leave fully blurred and are counted."""
        if event.kind == "stage.failed":
            logger.error("session %s: camera %s failed closed", self.session_id, event.data)

    def video_stats(self) -> dict[str, Any] | None:
        """The camera's figures for the broadcaster's page, or None without a camera:
        ``frames`` in, ``frames_blurred_whole`` (failed closed: a detector failed,
        stalled or the server fell behind), ``regions_blurred`` per kind, the switches,
        and from the second call on ``fps_camera`` / ``fps_sent``: frames per second
        the camera sent and friends got since the previous call (the stats loop's)."""
        if self.video_relay is None:
            return None
        metrics = self.video_metrics
        rates = self._video_rate.update(
            now_s=time.monotonic(),
            camera_frames=metrics.frames_in + metrics.frames_dropped,
            sent_frames=metrics.frames_in,
        )
        fps = (
            {}
            if rates is None
            else {"fps_camera": round(rates[0], 1), "fps_sent": round(rates[1], 1)}
        )
        return {
            **fps,
            "frames": metrics.frames_in,
            "frames_redacted": metrics.frames_processed,
            "frames_blurred_whole": metrics.frames_failed_closed,
            "frames_dropped": metrics.frames_dropped,
            "regions_blurred": dict(metrics.regions_blurred),
            "blur_faces": self.blur_faces,
            "blur_plates": self.blur_plates,
            "blur_text": self.blur_text,
            "packets_encoded": self.video_relay.packets_encoded,
        }

    async def _pii_loop(self) -> None:
        """Every second: masked captions of what left the delay line to the session's
        pages (``session.caption``), and new redactions to the audit trail."""
        while not self.closing:
            await asyncio.sleep(1.0)
            await self._pii_publish()

    async def _pii_publish(self) -> None:
        live = self.pii
        if live is None:
            return
        origin = live.released_start or 0
        for start, end, text in live.captions_due():
            cue = {
                "start": round((start - origin) / SAMPLE_RATE, 2),
                "end": round((end - origin) / SAMPLE_RATE, 2),
                "text": text,
            }
            self.captions.append(cue)
            await self._tell_session("session.caption", {"session_id": self.session_id, **cue})
        found = live.audit_drain()
        if found:
            events = [
                services.RedactionInput(
                    start_s=(r.start - origin) / SAMPLE_RATE,
                    end_s=(r.end - origin) / SAMPLE_RATE,
                    entity=r.label or "UNKNOWN",
                    confidence=r.confidence,
                    detector=r.source,
                )
                for r in found
            ]
            try:
                await database_sync_to_async(services.redaction_events_add)(
                    session_id=self.session_id, events=events
                )
            except Exception:
                logger.exception("session %s: could not store redactions", self.session_id)

    async def _pii_close(self) -> None:
        """After the graph drained: finish the analysis, send the last captions and
        redactions, and store the redacted transcript on the recording."""
        live = self.pii
        if live is None:
            return
        if self._pii_task is not None:
            self._pii_task.cancel()
        loop = asyncio.get_running_loop()
        # Normally finished already (the delay line waited for it at the stop); one
        # that overran that wait is stuck: give it little more.
        wait_s = 1.0 if live.drain_timed_out else 10.0
        try:
            await asyncio.wait_for(
                loop.run_in_executor(self.server.workers.load, live.threaded.close, wait_s),
                wait_s + 2.0,
            )
        except TimeoutError:
            logger.error("session %s: PII analysis did not finish", self.session_id)
        await self._pii_publish()
        try:
            await database_sync_to_async(services.recording_transcript_set)(
                session_id=self.session_id, cues=self.captions
            )
        except Exception:
            logger.exception("session %s: could not store the transcript", self.session_id)

    async def _connect_deadline(self, connected: asyncio.Event) -> None:
        """End the broadcast ("failed") if its pc is not connected in time: a peer that
        never connects would hold its UDP socket, session and denoiser for ever."""
        timeout = settings.HEARTH["PEER_CONNECT_TIMEOUT_S"]
        try:
            await asyncio.wait_for(connected.wait(), timeout)
        except TimeoutError:
            if not self.closing:
                logger.info(
                    "session %s: broadcaster not connected within %.1f s; ending it",
                    self.session_id,
                    timeout,
                )
                self.server.broadcast_stop_soon(self.session_id, reason="failed")

    def _on_recorder_failed(self, exc: Exception) -> None:
        """The recorder can no longer write: end the broadcast instead of dropping audio."""
        if self.closing:
            return
        reason = "limit_disk" if isinstance(exc, OSError) else "limit_size"
        logger.error("session %s: recording cannot go on (%s); ending it", self.session_id, exc)
        self.server.broadcast_stop_soon(self.session_id, reason=reason)

    async def _limits_loop(self) -> None:
        """End the broadcast at ``MAX_BROADCAST_S`` after it connected (``limit_duration``,
        ``session.warning`` ``LIMIT_WARNING_S`` before), or when every ``LIMIT_CHECK_S``
        the user's quota or the disk floor is found reached (``limit_quota``/``limit_disk``).
        """
        hearth = settings.HEARTH
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + hearth["MAX_BROADCAST_S"]
        warn_at = ends_at - hearth["LIMIT_WARNING_S"]
        next_check = loop.time() + hearth["LIMIT_CHECK_S"]  # go-live has just checked
        warned = False
        while not self.closing:
            now = loop.time()
            if now >= ends_at:
                self.server.broadcast_stop_soon(self.session_id, reason="limit_duration")
                return
            if not warned and now >= warn_at:
                warned = True
                await self._warn(seconds_left=ends_at - now)
            if now >= next_check:
                next_check = now + hearth["LIMIT_CHECK_S"]
                reason = await self._storage_limit()
                if reason is not None and not self.closing:
                    logger.warning("session %s reached %s; ending it", self.session_id, reason)
                    self.server.broadcast_stop_soon(self.session_id, reason=reason)
                    return
            wake = min(ends_at, next_check, ends_at if warned else warn_at)
            await asyncio.sleep(max(0.0, wake - loop.time()))

    async def _storage_limit(self) -> str | None:
        def check() -> str | None:
            live_bytes = 0
            for path in (
                self.recording_file,
                services.recording_fragments_path(self.recording_file),
            ):
                with contextlib.suppress(OSError):
                    live_bytes += path.stat().st_size
            return selectors.live_session_limit_exceeded(
                broadcaster_id=self.broadcaster_id, live_bytes=live_bytes
            )

        try:
            return await database_sync_to_async(check)()
        except Exception:
            logger.exception("could not check the limits of session %s", self.session_id)
            return None

    async def _warn(self, *, seconds_left: float) -> None:
        """Tell the session's pages the broadcast ends at the duration cap soon."""
        left = max(1, round(seconds_left))
        data = {
            "session_id": self.session_id,
            "reason": "limit_duration",
            "seconds_left": left,
            "message": f"Broadcasts are limited in length: this one ends in {left} s.",
        }
        await self._tell_session("session.warning", data)

    def _start_graph(self, track: Any) -> None:
        assert self.stage is not None and self.recorder_sink is not None and self.relay
        stages: list[Any] = [self.mute, self.stage]
        sinks: list[Any] = [self.recorder_sink, RelaySink(self.relay)]
        if self.video_recording is not None:
            sinks.append(self.video_recording.audio_sink())  # what the relay gets
        taps: dict[int, list[Any]] = {}
        if self.pii is not None:
            # Analysis reads the denoised audio (output of stage 1); listeners and
            # the recorder get it only through the delay line.
            stages += self.pii.stages()
            taps[1] = [self.pii.tap()]
            sinks.append(self.pii.released_sink())
            self._pii_task = asyncio.ensure_future(self._pii_loop())
        graph = Graph(stages=stages, sinks=sinks, taps=taps)
        self.source = TrackSource(
            track,
            hold_s=settings.HEARTH["MEDIA_RECONNECT_S"],
            on_track_end=lambda: self.media_lost("its track ended"),
        )
        self.runner = GraphRunner(
            graph,
            self.source,
            workers=self.server.workers,
            name=f"session{self.session_id}",
            deadline_s=settings.HEARTH["PROCESS_DEADLINE_S"],
            max_lag_s=settings.HEARTH["MAX_LAG_S"],
            metrics=self.metrics,
            on_event=self._on_event,
        )
        self._task = asyncio.ensure_future(self._run(self.runner))
        self._stats_task = asyncio.ensure_future(self._stats_loop())

    async def _run(self, runner: GraphRunner) -> None:
        await runner.run()
        if not self.closing:  # the broadcaster's track ended by itself
            self.server.broadcast_stop_soon(self.session_id, reason="disconnected")

    def _on_event(self, event: Event) -> None:
        if self.pii is not None and self.pii.on_event(event):
            return
        if event.kind == "stage.failed":
            logger.error("session %s: %s failed closed", self.session_id, event.data)

    async def add_listener(self, *, key: str, user_id: int, offer_sdp: str) -> str:
        """Answer a listener's recvonly offer with a track of the relay's packets.

        The listener counts (``session.stats``) once its pc is connected; until then it
        holds one of ``user_id``'s ``MAX_PENDING_LISTENS_PER_USER`` slots, and it is
        closed if it does not connect within ``PEER_CONNECT_TIMEOUT_S``.

        Raises:
            SignalingError: unusable offer, too many pending listens, not live.
        """
        await self.remove_listener(key=key)  # a re-listen from the same page replaces
        if self.relay is None or self.runner is None:
            raise SignalingError(
                "The broadcast has not started sending audio yet.", code="not_ready"
            )
        offer_sdp = self.server.offer_prepare(offer_sdp, role="listen")
        self.server.pending_listen_acquire(user_id)  # released by _listener_settle
        pc = RTCPeerConnection(ice_configuration())
        track = self.relay.subscribe()
        video: RelayTrack | None = None
        video_sender: Any = None
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            sender = pc.addTrack(track)
            offers_video = any(
                t.kind == "video" and t.direction in ("sendrecv", "recvonly")
                for t in pc.getTransceivers()
            )
            # A listener that cannot decode VP8 (the shared encoder's codec) gets the
            # audio alone.
            vp8 = "vp8/90000" in offer_sdp.lower()
            if self.video_relay is not None and offers_video and vp8:
                video = self.video_relay.subscribe()
                video_sender = pc.addTrack(video)
                _vp8_only(next(t for t in pc.getTransceivers() if t.sender is video_sender))
            _transceivers_limit(pc, send=(track, video) if video is not None else (track,))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:
            await self._listen_undo(user_id=user_id, pc=pc, track=track, video=video)
            logger.info("unusable listener SDP offer (%s)", type(exc).__name__)  # no SDP in logs
            raise SignalingError("The SDP offer could not be used.") from exc
        if self.closing:  # the broadcast ended while we answered
            await self._listen_undo(user_id=user_id, pc=pc, track=track, video=video)
            raise SignalingError("This broadcast has ended.", code="not_live")
        self.relay.attach_sender(sender)
        if video is not None and self.video_relay is not None:
            self.video_relay.attach_sender(video_sender)
        listener = _Listener(
            pc=pc, track=track, user_id=user_id, connected=asyncio.Event(), video_track=video
        )
        self.listeners[key] = listener

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected" and not listener.connected.is_set():
                listener.connected.set()
                self._listener_settle(listener)
                if self.listeners.get(key) is listener and not self.closing:
                    self.server.spawn(self.publish_stats())
            if pc.connectionState in ("failed", "closed"):
                await self.remove_listener(key=key, pc=pc)

        listener.watchdog = asyncio.ensure_future(self._listener_deadline(key, listener))
        # The answer goes out now; counting and telling friends happens beside it
        # (publish_stats sends only when the connected count changed).
        self.server.spawn(self.publish_stats())
        return pc.localDescription.sdp

    async def _listen_undo(
        self,
        *,
        user_id: int,
        pc: RTCPeerConnection,
        track: RelayTrack,
        video: RelayTrack | None = None,
    ) -> None:
        """Release what a listen that will not be answered took: the user's pending
        slot, the relay tracks and the peer connection."""
        self.server.pending_listen_release(user_id)
        track.stop()
        if video is not None:
            video.stop()
        await pc.close()

    def _listener_settle(self, listener: _Listener) -> None:
        """Give back the listener's pending slot (once: connected or removed)."""
        if listener.pending:
            listener.pending = False
            self.server.pending_listen_release(listener.user_id)

    async def _listener_deadline(self, key: str, listener: _Listener) -> None:
        """Close the listener if its pc is not connected within the timeout, and tell
        its page (``connect_timeout``)."""
        timeout = settings.HEARTH["PEER_CONNECT_TIMEOUT_S"]
        try:
            await asyncio.wait_for(listener.connected.wait(), timeout)
            return
        except TimeoutError:
            pass
        if self.listeners.get(key) is not listener:
            return
        logger.info(
            "session %s: listener %s not connected within %.1f s; closed",
            self.session_id,
            listener.user_id,
            timeout,
        )
        listener.watchdog = None  # finishing by itself: not to be cancelled
        await self.remove_listener(key=key, pc=listener.pc)
        await self.server._reply(
            key,
            {
                "type": "rtc.listen.error",
                "session_id": self.session_id,
                "code": "connect_timeout",
                "message": "The audio connection could not be set up in time.",
            },
        )

    async def remove_listener(self, *, key: str, pc: RTCPeerConnection | None = None) -> None:
        """Close and forget the listener ``key`` (only if its pc is ``pc``, when given)."""
        listener = self.listeners.get(key)
        if listener is None or (pc is not None and listener.pc is not pc):
            return
        del self.listeners[key]
        self._listener_settle(listener)
        if listener.watchdog is not None:
            listener.watchdog.cancel()
        listener.track.stop()
        if listener.video_track is not None:
            listener.video_track.stop()
        await listener.pc.close()
        if not self.closing:
            self.server.spawn(self.publish_stats())

    def listener_has_video(self, key: str) -> bool:
        """Whether the listener ``key`` is sent the redacted camera (the broadcast has
        one, and its offer receives VP8 video)."""
        listener = self.listeners.get(key)
        return listener is not None and listener.video_track is not None

    def listeners_connected(self) -> int:
        """Listeners whose peer connection is connected (the count friends see)."""
        return sum(1 for listener in self.listeners.values() if listener.connected.is_set())

    def stats(self, *, media: bool) -> dict[str, Any]:
        """The ``session.stats`` payload: connected listeners, and the engine's figures."""
        data: dict[str, Any] = {
            "session_id": self.session_id,
            "listeners": self.listeners_connected(),
            "muted": self.mute.muted,
            "denoise": self.denoise_on,
        }
        if self.pii is not None:
            data["pii"] = self.pii.stats()
        if media:
            snapshot = self.metrics.snapshot()
            snapshot["loop_lag"] = self.server.loop_lag.summary()
            if self.relay is not None:
                snapshot["relay"] = {
                    "mode": "per_listener" if self.relay.per_listener else "once",
                    "packets_encoded": self.relay.packets_encoded,
                    "listener_drops": sum(t.dropped for t in self.relay.tracks),
                }
            data["media"] = snapshot
            video = self.video_stats()
            if video is not None:
                data["video"] = video
        return data

    @property
    def denoise_on(self) -> bool:
        """Whether the broadcast's audio is being denoised (or about to be)."""
        return self.stage is not None and self.stage.enabled

    async def control(self, *, muted: bool | None = None, denoise: bool | None = None) -> None:
        """Apply the broadcaster's live switches and tell the session's pages.

        ``muted``: listeners and the recording get silence from the next block on.
        ``denoise``: off passes the audio through (same delay); on resumes
        DeepFilterNet3, loading it first (in the load pool) if the broadcast started
        without it.

        Raises:
            ProcessorError, ModelIntegrityError: the denoiser could not be loaded.
        """
        if muted is not None:
            self.mute.muted = muted
        if denoise is not None and self.stage is not None:
            if denoise and not self.stage.has_processor:
                chain = await asyncio.get_running_loop().run_in_executor(
                    self.server.workers.load, functools.partial(audio_chain_build, denoise=True)
                )
                if self.closing or self.stage.has_processor:
                    chain.close()
                else:
                    self.stage.processor_set(chain)
            self.stage.enabled = denoise
        data = {"session_id": self.session_id, "muted": self.mute.muted, "denoise": self.denoise_on}
        await self._tell_session("session.state", data)

    async def _publish_names(self) -> None:
        """Tell the broadcaster's page who is listening (connected), when it changed.

        Only the broadcaster's page gets names (``session.listeners``); listeners and
        friends get the count alone.
        """
        ids = tuple(
            sorted({lsn.user_id for lsn in self.listeners.values() if lsn.connected.is_set()})
        )
        if ids == self._published_names or self.owner_page is None:
            return
        self._published_names = ids
        names = await database_sync_to_async(
            lambda: {
                uid: (username, display, avatar_url(user_id=uid, avatar=avatar))
                for uid, username, display, avatar in User.objects.filter(id__in=ids).values_list(
                    "id", "username", "display_name", "avatar"
                )
            }
        )()
        data = {
            "session_id": self.session_id,
            "listeners": [
                {
                    "id": uid,
                    "username": names[uid][0],
                    "display_name": names[uid][1],
                    "avatar_url": names[uid][2],  # listeners are the broadcaster's friends
                }
                for uid in ids
                if uid in names
            ],
        }
        await self.server._reply(
            self.owner_page, {"type": "hearth.event", "event": "session.listeners", "data": data}
        )

    async def publish_stats(self) -> None:
        """Store the connected listener count and tell the session's pages and the
        broadcaster's friends' dashboards (nothing when the count did not change), and
        the broadcaster's page who is listening."""
        try:
            await self._publish_names()
        except Exception:
            logger.exception("could not publish the listeners of session %s", self.session_id)
        data = self.stats(media=False)
        if data["listeners"] == self._published_listeners:
            return
        self._published_listeners = data["listeners"]
        layer = get_channel_layer()
        message = {"type": "hearth.event", "event": "session.stats", "data": data}
        try:
            await database_sync_to_async(services.live_session_listeners_set)(
                session_id=self.session_id, listeners=data["listeners"]
            )
            friends = await database_sync_to_async(friend_ids)(user=self.broadcaster_id)
            groups = [services.session_group(self.session_id)]
            groups += [user_group(uid) for uid in sorted(friends)]
            for group in groups:
                await layer_call(layer.group_send, group, message)
        except Exception:
            logger.exception("could not publish listener count of session %s", self.session_id)

    async def _tell_session(self, event: str, data: dict[str, Any]) -> None:
        """Send the event ``event`` with ``data`` to every page of this session (its
        ``session_group``); a failure is logged, never raised."""
        message = {"type": "hearth.event", "event": event, "data": data}
        try:
            await layer_call(
                get_channel_layer().group_send, services.session_group(self.session_id), message
            )
        except Exception:
            logger.exception("could not send %s to session %s", event, self.session_id)

    async def _video_counts_loop(self) -> None:
        """Every ``VIDEO_COUNTS_S``: the camera's redaction counts onto the recording
        row, so a crash repair keeps them (the final ones are stored at the stop)."""
        while not self.closing:
            await asyncio.sleep(VIDEO_COUNTS_S)
            metrics = self.video_metrics
            try:
                await database_sync_to_async(services.recording_video_counts_set)(
                    session_id=self.session_id,
                    frames_processed=metrics.frames_processed,
                    faces_blurred=int(metrics.regions_blurred.get("face", 0)),
                    plates_blurred=int(metrics.regions_blurred.get("plate", 0)),
                    text_blurred=int(metrics.regions_blurred.get("text", 0)),
                    frames_failed_closed=metrics.frames_failed_closed,
                )
            except Exception:
                logger.exception("session %s: redaction counts not stored", self.session_id)

    async def _stats_loop(self) -> None:
        """Every ``STATS_INTERVAL_S``: the engine's figures to the session's pages."""
        while not self.closing:
            await asyncio.sleep(settings.HEARTH["STATS_INTERVAL_S"])
            await self._tell_session("session.stats", self.stats(media=True))

    # -- the broadcaster's page: detached for a grace period, re-attached -----------
    def detach(self, page: str | None) -> bool:
        """The broadcaster's page ``page`` is gone (socket closed, presence row gone):
        keep the broadcast ``BROADCAST_GRACE_S`` while its media flows, for the page
        to re-attach (:meth:`attach`); end it (``disconnected``) if none does.

        Does nothing (False) unless ``page`` is the room's current page: a page that
        another one replaced no longer speaks for the broadcast.
        """
        if self.closing or page is None or self.owner_page != page:
            return False
        self.owner_page = None
        grace = settings.HEARTH["BROADCAST_GRACE_S"]
        if grace <= 0:
            self.server.broadcast_stop_soon(self.session_id, reason="disconnected")
            return True
        logger.info(
            "session %s: the broadcaster's page is gone; %.1f s grace", self.session_id, grace
        )
        if self._grace_task is not None:
            self._grace_task.cancel()
        self._grace_task = asyncio.ensure_future(self._grace_end(grace))
        return True

    async def _grace_end(self, grace: float) -> None:
        await asyncio.sleep(grace)
        if self.owner_page is None and not self.closing:
            logger.info("session %s: no page re-attached within %.1f s", self.session_id, grace)
            self.server.broadcast_stop_soon(self.session_id, reason="disconnected")

    def attach(self, page: str) -> str | None:
        """Make ``page`` the broadcaster's page (a reconnected socket, or another tab of
        the broadcaster); returns the page it replaces, if any. Ends any grace period.
        """
        previous = self.owner_page
        self.owner_page = page
        if self._grace_task is not None:
            self._grace_task.cancel()
            self._grace_task = None
        self._published_names = (-1,)  # the new page gets who is listening
        self.server.spawn(self.publish_stats())
        return previous if previous != page else None

    async def _video_recording_finish(self) -> None:
        """Finish the camera's MP4 (both graphs have drained) in the I/O pool and keep
        its figures and the camera's redaction counts in :attr:`video_info`. On failure
        the fragment file stays for :func:`services.live_session_end` to finish from
        disk (or the WAV stays the recording)."""
        recording = self.video_recording
        if recording is None:
            return
        target = services.recording_mp4_path(self.recording_file)
        loop = asyncio.get_running_loop()
        try:
            facts = await loop.run_in_executor(self.server.workers.io, recording.finalise, target)
            if facts is None:
                return
            duration_s = await loop.run_in_executor(self.server.workers.io, mp4_duration_s, target)
        except Exception:
            logger.exception("session %s: the video recording cannot be finished", self.session_id)
            return
        metrics = self.video_metrics
        self.video_info = services.VideoRecordingInfo(
            path=target,
            duration_s=duration_s,
            size_bytes=facts.size_bytes,
            blur_faces=self.blur_faces,
            blur_plates=self.blur_plates,
            blur_text=self.blur_text,
            frames_processed=metrics.frames_processed,
            faces_blurred=int(metrics.regions_blurred.get("face", 0)),
            plates_blurred=int(metrics.regions_blurred.get("plate", 0)),
            text_blurred=int(metrics.regions_blurred.get("text", 0)),
            frames_failed_closed=metrics.frames_failed_closed,
        )
        recorder = recording.recorder
        logger.info(
            "session %s: video recorded, %d frames (%d dropped), %.1f s",
            self.session_id,
            facts.video_frames,
            recorder.frames_dropped if recorder is not None else 0,
            duration_s,
        )

    async def close(self) -> RecordingInfo | None:
        """Close every peer connection, let the graph flush and drain, finalise the WAV.

        Each step runs even if an earlier one failed; a stalled stage is never closed
        under its abandoned thread.
        """
        self.closing = True
        await self._open_done.wait()  # an open() in flight gives up at its next step
        loop = asyncio.get_running_loop()
        for key in list(self.listeners):
            with contextlib.suppress(Exception):
                await self.remove_listener(key=key)
        if self._stats_task is not None:
            self._stats_task.cancel()
        if self._video_counts_task is not None:
            self._video_counts_task.cancel()
        if self._grace_task is not None and self._grace_task is not asyncio.current_task():
            self._grace_task.cancel()
        if self._media_task is not None and self._media_task is not asyncio.current_task():
            self._media_task.cancel()
        if self._connect_task is not None:
            self._connect_task.cancel()
        if self._limits_task is not None and self._limits_task is not asyncio.current_task():
            self._limits_task.cancel()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        if self.runner is not None:
            self.runner.stop()  # the runner flushes, its sinks drain (recorder: lossless)
        if self.video_runner is not None:
            self.video_runner.stop()
        if self._video_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._video_task), timeout=CLOSE_DRAIN_S)
            except TimeoutError:
                logger.error("session %s video did not drain; cancelling", self.session_id)
                self._video_task.cancel()
            except Exception:
                logger.exception("session %s video graph failed", self.session_id)
        if self.video_relay is not None:
            self.video_relay.close()
        if self.video_runner is not None:
            try:
                await asyncio.wait_for(
                    loop.run_in_executor(self.server.workers.load, self.video_runner.stages_close),
                    timeout=2.0,
                )
            except TimeoutError:
                logger.error("video stages of session %s did not close", self.session_id)
        if self._task is not None:
            # A bleeped broadcast's delay line first lets the analysis decide its tail
            # (up to pii.drain_s), so the recording keeps it with its bleeps.
            drain_s = CLOSE_DRAIN_S + (self.pii.drain_s if self.pii is not None else 0.0)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=drain_s)
            except TimeoutError:
                logger.error("session %s graph did not drain; cancelling", self.session_id)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            except Exception:
                logger.exception("session %s graph failed", self.session_id)
        if self.relay is not None:
            self.relay.close()
        await self._video_recording_finish()
        with contextlib.suppress(Exception):
            await self._pii_close()
        info = self.recorder_sink.info if self.recorder_sink is not None else None
        if self.recorder_sink is not None and info is None and self.runner is None:
            # The graph never started: close the recorder here.
            info = await loop.run_in_executor(
                self.server.workers.io, self.recorder_sink.recorder.close
            )
        if self.runner is not None:
            closing = loop.run_in_executor(self.server.workers.load, self.runner.stages_close)
        elif self.stage is not None:
            closing = loop.run_in_executor(self.server.workers.load, self.stage.close)
        else:
            return info
        try:
            await asyncio.wait_for(closing, timeout=2.0)
        except TimeoutError:
            logger.error("processor of session %s did not close; abandoned", self.session_id)
        return info


@dataclass(frozen=True)
class GoLiveOptions:
    """What a broadcaster chose at go-live (validated by the page's consumer).

    Attributes:
        denoise: DeepFilterNet3 on at the start (switchable live).
        title: Shown to friends and used for the recording ("" = a default title).
        bleep: "tone" or "silence" to bleep spoken personal information, "" off.
        delay_s: Broadcast delay D in seconds while bleeping.
        blur_faces: Blur faces in the camera's frames (when the offer sends video).
        blur_plates: Blur licence plates in the camera's frames.
        blur_text: Blur on-screen personal text (e-mails, phone and card numbers).
    """

    denoise: bool = True
    title: str = ""
    bleep: str = ""
    delay_s: float = 0.0
    blur_faces: bool = True
    blur_plates: bool = True
    blur_text: bool = False


class MediaServer:
    """A media worker: the broadcasts it holds, and the channel that reaches them.

    With ``worker=True`` (``manage.py mediaworker``, or daphne when
    ``HEARTH["MEDIA_IN_PROCESS"]``) it announces itself as a ``MediaWorker`` row
    (capacity ``MEDIA_WORKER_CAPACITY``), takes go-lives placed on it
    (``rtc.broadcast.start``/``rtc.broadcast.stop``) and listens routed to it
    (``rtc.listen.start``/``rtc.listen.stop``) on its channel, and stamps itself and
    its sessions alive. With ``worker=False`` (a daphne that carries no media) it
    only runs housekeeping, including ending the sessions of dead workers.
    """

    def __init__(self, *, worker: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self.worker = worker  # False: a web process that only runs housekeeping
        self.capacity = settings.HEARTH["MEDIA_WORKER_CAPACITY"]
        self.rooms: dict[int, BroadcastRoom] = {}
        self.channel_name: str | None = None
        self.started = False
        self.draining = False  # shutting down: takes no go-lives, advertises capacity 0
        self._starting = 0  # go-lives accepted whose room is not in self.rooms yet
        self.workers = Workers(
            encode_threads=settings.HEARTH["MEDIA_THREADS"],
            processing_slots=settings.HEARTH["MEDIA_THREADS"],
        )
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: dict[int, asyncio.Task[int | None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._key_tails: dict[str, asyncio.Task[None]] = {}
        self.loop_lag = StageTimer(window=600)
        self.shut_down = False
        self.candidates_dropped = 0  # remote ICE candidates removed from offers
        self._pending_listens: collections.Counter[int] = collections.Counter()

    async def ensure_started(self) -> str | None:
        """Create this process's channel and background loops (idempotent); returns the
        worker's channel name (None for a web process that is not a worker).

        Called when the server starts (``project/asgi.py`` under daphne, or
        ``manage.py mediaworker``) and again before every placement by an in-process
        worker's pages, so housekeeping never waits for the first broadcast.
        """
        async with self._lock:
            if self.started:
                return self.channel_name
            ice_host_addresses_apply(settings.ICE_HOST_ADDRESSES)
            layer = get_channel_layer()
            if self.worker:
                if isinstance(layer, InMemoryChannelLayer):
                    # One process only: sessions still "live" and worker rows are a
                    # crash's leftovers (and unreachable without a shared layer).
                    await database_sync_to_async(services.live_session_end_orphaned)()
                    await database_sync_to_async(services.media_workers_forget)()
                # The default "specific" prefix matters: channels_redis receives every
                # "specific.<client>!" channel of a process through one shared list and
                # lock; another prefix would hold that lock on its own list and starve
                # the consumers' channels.
                self.channel_name = await layer.new_channel()
                await database_sync_to_async(services.media_worker_register)(
                    **self._worker_identity()
                )
                log_context_set(session_id=None, user_id=None)  # loops below: no one's ids
                self._tasks += [
                    asyncio.ensure_future(self._receive_loop()),
                    asyncio.ensure_future(self._heartbeat_loop()),
                    asyncio.ensure_future(self._loop_lag_loop()),
                ]
            self._tasks += [
                asyncio.ensure_future(self._housekeeping_loop()),
                asyncio.ensure_future(self._worker_loop()),
            ]
            _install_shutdown_hook(self)
            self.started = True
            if self.worker:
                logger.info("media worker on %s (capacity %d)", self.channel_name, self.capacity)
        return self.channel_name

    def _worker_identity(self) -> dict[str, Any]:
        assert self.channel_name is not None
        return {
            "channel_name": self.channel_name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "capacity": 0 if self.draining else self.capacity,
        }

    # -- broadcasts -----------------------------------------------------------
    async def broadcast_start(
        self,
        *,
        user: User,
        offer_sdp: str,
        denoise: bool,
        owner_page: str | None = None,
        title: str = "",
        bleep: str = "",
        delay_s: float = 3.0,
        blur_faces: bool = True,
        blur_plates: bool = True,
        blur_text: bool = False,
    ) -> tuple[int, str]:
        """Open a live session for ``user`` from their SDP offer; returns (session id, answer).

        ``owner_page`` is the broadcaster page's channel: when that page is gone (its
        presence row removed), the broadcast is stopped (``disconnected``).

        Raises:
            SignalingError: the offer is unusable (the session is then ended), or
                ``worker_full``/``unavailable`` when this worker takes no more.
            services.LiveSessionError: the user is already live elsewhere.
        """
        if self.shut_down:
            raise SignalingError("The server is shutting down.", code="unavailable")
        if self.draining:
            raise SignalingError("This media server is shutting down.", code="unavailable")
        if len(self.rooms) + self._starting >= self.capacity:
            raise SignalingError("This media server is full.", code="worker_full")
        # Counted in _starting until its room joins self.rooms, never in both.
        self._starting += 1
        counted = [True]
        try:
            options = GoLiveOptions(
                denoise=denoise,
                title=title,
                bleep=bleep,
                delay_s=delay_s,
                blur_faces=blur_faces,
                blur_plates=blur_plates,
                blur_text=blur_text,
            )
            return await self._broadcast_open(
                user=user,
                offer_sdp=offer_sdp,
                options=options,
                owner_page=owner_page,
                counted=counted,
            )
        finally:
            if counted[0]:
                self._starting -= 1

    async def _broadcast_open(
        self,
        *,
        user: User,
        offer_sdp: str,
        options: GoLiveOptions,
        owner_page: str | None,
        counted: list[bool],
    ) -> tuple[int, str]:
        channel = await self.ensure_started()
        assert channel is not None, "only a media worker holds broadcasts"
        # Everything that can be checked on the text is, before anything is created.
        offer_sdp = self.offer_prepare(sdp_validate(offer_sdp), role="broadcast")
        session, recording = await database_sync_to_async(services.live_session_start)(
            broadcaster=user,
            owner_channel=channel,
            denoise=options.denoise,
            title=options.title,
            bleep=options.bleep,
            delay_s=options.delay_s,
        )
        room = BroadcastRoom(
            server=self,
            session_id=session.id,
            broadcaster_id=user.id,
            denoise=options.denoise,
            recording_file=services.recording_path(recording),
            owner_page=owner_page,
            bleep=options.bleep,
            delay_s=options.delay_s,
            blur_faces=options.blur_faces,
            blur_plates=options.blur_plates,
            blur_text=options.blur_text,
        )
        self.rooms[session.id] = room
        self._starting -= 1
        counted[0] = False
        log_context_set(session_id=session.id, user_id=user.id)  # the room's tasks inherit it
        try:
            answer = await room.open(offer_sdp)
        except Exception:
            await self.broadcast_stop(session.id, reason="failed")
            raise
        broadcast_started_count()
        return session.id, answer

    def offer_prepare(self, offer_sdp: str, *, role: Role) -> str:
        """The offer with its remote candidates filtered, once it passed :func:`offer_check`.

        Keeps at most ``MAX_REMOTE_CANDIDATES`` candidates and drops addresses no
        client could have (see :func:`streams.sdp.candidates_filter`); every drop is
        logged and counted in ``candidates_dropped``.

        Raises:
            SignalingError: the (filtered) offer misses something aiortc needs.
        """
        result = candidates_filter(
            offer_sdp,
            limit=settings.HEARTH["MAX_REMOTE_CANDIDATES"],
            deny=deny_networks_parse(settings.HEARTH["ICE_DENY_NETWORKS"]),
        )
        if result.dropped:
            self.candidates_dropped += result.dropped_total
            logger.warning(
                "%s offer: dropped %d remote ICE candidate(s) %s, kept %d",
                role,
                result.dropped_total,
                dict(sorted(result.dropped.items())),
                result.kept,
            )
        try:
            offer_check(result.sdp, role=role)
        except OfferError as exc:
            raise SignalingError(str(exc)) from exc
        return result.sdp

    def pending_listen_acquire(self, user_id: int) -> None:
        """Take one of ``user_id``'s pending-listen slots.

        Raises:
            SignalingError: ``too_many_pending`` when all ``MAX_PENDING_LISTENS_PER_USER``
                are taken.
        """
        limit = settings.HEARTH["MAX_PENDING_LISTENS_PER_USER"]
        if self._pending_listens[user_id] >= limit:
            raise SignalingError(
                f"Too many listens still connecting (limit {limit}).", code="too_many_pending"
            )
        self._pending_listens[user_id] += 1

    def pending_listen_release(self, user_id: int) -> None:
        """Give back a slot taken by :meth:`pending_listen_acquire`."""
        self._pending_listens[user_id] -= 1
        if self._pending_listens[user_id] <= 0:
            del self._pending_listens[user_id]

    def pending_listens(self, user_id: int) -> int:
        """``user_id``'s listens answered here and not yet connected."""
        return self._pending_listens[user_id]

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, keeping a reference until it finishes."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def broadcast_stop_soon(self, session_id: int, *, reason: str) -> None:
        """Schedule :meth:`broadcast_stop` from a callback (no await available)."""
        self.spawn(self.broadcast_stop(session_id, reason=reason))

    async def broadcast_stop(self, session_id: int, *, reason: str) -> int | None:
        """End a broadcast owned here; returns the finalised recording's id (or None).

        Safe to call several times and concurrently: the first call does the work.
        """
        if session_id in self._stopping:
            return await asyncio.shield(self._stopping[session_id])
        room = self.rooms.get(session_id)
        if room is None:  # already stopped (or never here): report what the database has
            recording = await database_sync_to_async(services.live_session_end)(
                session_id=session_id, reason=reason
            )
            return recording.id if recording else None
        task = asyncio.ensure_future(self._stop_room(room, reason))
        self._stopping[session_id] = task
        try:
            return await asyncio.shield(task)
        finally:
            self.rooms.pop(session_id, None)
            self._stopping.pop(session_id, None)

    async def _stop_room(self, room: BroadcastRoom, reason: str) -> int | None:
        log_context_set(session_id=room.session_id, user_id=room.broadcaster_id)  # own task
        info: RecordingInfo | None = None
        try:
            info = await room.close()
        except Exception:
            logger.exception("closing session %s failed; repairing its recording", room.session_id)
        broadcast_ended_count(room, reason)
        recording = await database_sync_to_async(services.live_session_end)(
            session_id=room.session_id, reason=reason, info=info, video=room.video_info
        )
        stats = room.metrics
        logger.info(
            "session %s ended (%s): %s blocks in, %s silenced, failed=%r",
            room.session_id,
            reason,
            stats.blocks_in,
            stats.blocks_failed_closed,
            stats.failed,
        )
        return recording.id if recording else None

    # -- cross-process signaling ---------------------------------------------
    async def _reply(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await layer_call(get_channel_layer().send, channel, message)
        except Exception as exc:  # the page is gone, or the layer is down for good
            logger.info("could not reach %s with %s: %r", channel, message.get("type"), exc)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        session_id = int(message.get("session_id") or 0)
        reply_channel = str(message.get("reply_channel", ""))
        room = self.rooms.get(session_id)
        log_context_set(session_id=session_id, user_id=message.get("user_id"))  # this task only
        if kind == "rtc.broadcast.start":
            await self._broadcast_start_message(message, reply_channel)
        elif kind == "rtc.broadcast.stop":
            if room is None:  # not ours (any more): report, never end another's session
                recording_id = await database_sync_to_async(selectors.recording_id_of_session)(
                    session_id=session_id
                )
            else:
                recording_id = await self.broadcast_stop(
                    session_id, reason=str(message.get("reason") or "stopped")[:40]
                )
            await self._reply(
                reply_channel,
                {
                    "type": "rtc.broadcast.ended",
                    "session_id": session_id,
                    "recording_id": recording_id,
                },
            )
        elif kind == "rtc.broadcast.control":
            if room is not None and not room.closing and room.owner_page == reply_channel:
                try:
                    await room.control(muted=message.get("muted"), denoise=message.get("denoise"))
                except Exception:
                    logger.exception("session %s: a live switch failed", session_id)
                    await self._reply(
                        reply_channel,
                        {
                            "type": "hearth.event",
                            "event": "session.warning",
                            "data": {
                                "session_id": session_id,
                                "reason": "control_failed",
                                "message": "The server could not switch denoise on.",
                            },
                        },
                    )
        elif kind == "rtc.listen.start":
            if room is None or room.closing:
                await self._reply(
                    reply_channel,
                    {
                        "type": "rtc.listen.error",
                        "session_id": session_id,
                        "code": "not_live",
                        "message": "This broadcast has ended.",
                    },
                )
                return
            try:
                answer = await room.add_listener(
                    key=reply_channel, user_id=int(message["user_id"]), offer_sdp=message["sdp"]
                )
            except SignalingError as exc:
                await self._reply(
                    reply_channel,
                    {
                        "type": "rtc.listen.error",
                        "session_id": session_id,
                        "code": exc.code,
                        "message": str(exc),
                    },
                )
                return
            await self._reply(
                reply_channel,
                {
                    "type": "rtc.listen.answer",
                    "session_id": session_id,
                    "sdp": answer,
                    "video": room.listener_has_video(reply_channel),
                },
            )
        elif kind == "rtc.listen.stop" and room is not None:
            await room.remove_listener(key=reply_channel)
        elif kind in ("rtc.broadcast.detach", "rtc.broadcast.attach"):
            await self._page_message(kind, message, room, reply_channel)
        elif kind == "rtc.broadcast.reconnect":
            await self._reconnect_message(message, room, reply_channel)
        else:
            logger.warning("media server ignored message of type %r", kind)

    async def _page_message(
        self,
        kind: str,
        message: dict[str, Any],
        room: BroadcastRoom | None,
        reply_channel: str,
    ) -> None:
        """``rtc.broadcast.detach``: the broadcasting page's socket closed (grace starts).
        ``rtc.broadcast.attach``: a page of the broadcaster takes the broadcast over
        (its consumer checked the session is the user's own); answered
        ``rtc.broadcast.attached`` or ``rtc.broadcast.attach_error``, and the page it
        replaces, if any, is told ``rtc.broadcast.detached``."""
        if kind == "rtc.broadcast.detach":
            if room is not None:
                room.detach(reply_channel)
            return
        session_id = int(message.get("session_id") or 0)
        if (
            room is None
            or room.closing
            or room.broadcaster_id != int(message.get("user_id") or 0)
            or not reply_channel
        ):
            await self._reply(
                reply_channel,
                {
                    "type": "rtc.broadcast.attach_error",
                    "session_id": session_id,
                    "code": "not_live",
                    "message": "This broadcast has ended.",
                },
            )
            return
        previous = room.attach(reply_channel)
        if previous is not None:
            await self._reply(
                previous, {"type": "rtc.broadcast.detached", "session_id": session_id}
            )
        await self._reply(
            reply_channel,
            {
                "type": "rtc.broadcast.attached",
                "session_id": session_id,
                "worker_channel": self.channel_name,
                **room.stats(media=False),
            },
        )

    async def _reconnect_message(
        self, message: dict[str, Any], room: BroadcastRoom | None, reply_channel: str
    ) -> None:
        """``rtc.broadcast.reconnect {session_id, user_id, sdp}``: the broadcasting page
        replaces its failed peer connection (:meth:`BroadcastRoom.reconnect`). Only
        the room's current page may; answered ``rtc.broadcast.reconnected {session_id,
        sdp}`` or ``rtc.broadcast.reconnect_error {session_id, code, message}``."""
        session_id = int(message.get("session_id") or 0)

        def refusal(code: str, text: str) -> dict[str, Any]:
            return {
                "type": "rtc.broadcast.reconnect_error",
                "session_id": session_id,
                "code": code,
                "message": text,
            }

        if room is None or room.closing:
            await self._reply(reply_channel, refusal("not_live", "This broadcast has ended."))
            return
        if (
            not reply_channel
            or room.owner_page != reply_channel
            or room.broadcaster_id != int(message.get("user_id") or 0)
        ):
            await self._reply(
                reply_channel, refusal("not_owner", "Another page holds this broadcast.")
            )
            return
        try:
            offer = self.offer_prepare(sdp_validate(message.get("sdp")), role="broadcast")
            answer = await room.reconnect(offer)
        except SignalingError as exc:
            await self._reply(reply_channel, refusal(exc.code, str(exc)))
            return
        await self._reply(
            reply_channel,
            {"type": "rtc.broadcast.reconnected", "session_id": session_id, "sdp": answer},
        )

    async def _broadcast_start_message(self, message: dict[str, Any], reply_channel: str) -> None:
        """Open a go-live placed on this worker and answer (or refuse) its page."""
        request_id = str(message.get("request_id", ""))

        def refusal(code: str, text: str) -> dict[str, Any]:
            return {
                "type": "rtc.broadcast.error",
                "request_id": request_id,
                "worker_channel": self.channel_name,
                "code": code,
                "message": text,
            }

        user = await database_sync_to_async(
            User.objects.filter(id=int(message.get("user_id") or 0), is_active=True).first
        )()
        if user is None:
            await self._reply(reply_channel, refusal("not_allowed", "Sign in to go live."))
            return
        try:
            session_id, answer = await self.broadcast_start(
                user=user,
                offer_sdp=message.get("sdp"),  # type: ignore[arg-type]  # validated there
                denoise=bool(message.get("denoise", True)),
                owner_page=reply_channel or None,
                title=str(message.get("title") or ""),
                bleep=str(message.get("bleep") or ""),
                delay_s=float(message.get("delay_s") or settings.HEARTH["PII_DELAY_S"]),
                blur_faces=message.get("blur_faces") is not False,
                blur_plates=message.get("blur_plates") is not False,
                blur_text=message.get("blur_text") is True,
            )
        except (SignalingError, services.LiveSessionError) as exc:
            await self._reply(reply_channel, refusal(exc.code, str(exc)))
            return
        except Exception:
            logger.exception("go-live failed on this worker")
            await self._reply(
                reply_channel, refusal("internal", "Something went wrong on the server.")
            )
            return
        await self._reply(
            reply_channel,
            {
                "type": "rtc.broadcast.answer",
                "request_id": request_id,
                "worker_channel": self.channel_name,
                "session_id": session_id,
                "sdp": answer,
            },
        )

    async def _receive_loop(self) -> None:
        layer = get_channel_layer()
        assert self.channel_name is not None
        while True:
            try:
                message = await layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("channel layer receive failed; retrying")
                await asyncio.sleep(1.0)
                continue
            self.handle_in_order(message)

    def handle_in_order(self, message: dict[str, Any]) -> asyncio.Task[None]:
        """Handle ``message`` after every earlier message of the same page.

        Each page's (``reply_channel``'s) messages run strictly one after another, in
        arrival order; different pages run concurrently, so one slow SDP answer does
        not hold up everyone else's. Each message's task waits for the task of the
        message before it (a chain per page), so no lock can be dropped while a
        waiter is queued.
        """
        key = str(message.get("reply_channel", ""))
        previous = self._key_tails.get(key)
        task = asyncio.ensure_future(self._handle_after(previous, message))
        self._key_tails[key] = task
        self._background.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._background.discard(finished)
            if self._key_tails.get(key) is finished:
                del self._key_tails[key]

        task.add_done_callback(done)
        return task

    async def _handle_after(
        self, previous: asyncio.Task[None] | None, message: dict[str, Any]
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        try:
            await self._handle(message)
        except Exception:
            logger.exception("media server failed to handle %r", message.get("type"))

    async def _heartbeat_loop(self) -> None:
        interval = settings.HEARTH["SESSION_HEARTBEAT_S"]
        while True:
            await asyncio.sleep(interval)
            try:
                await self.heartbeat()
            except Exception:
                logger.exception("heartbeat failed")

    async def heartbeat(self) -> None:
        """Stamp this process's sessions as alive; stop those ended elsewhere.

        Only sessions that were here *before* the database call are judged: a
        broadcast that starts while the call is in flight was not in the stamped list,
        and must not be mistaken for one the database no longer calls live.
        """
        stamped = list(self.rooms)
        live = await database_sync_to_async(services.live_session_heartbeat)(session_ids=stamped)
        for session_id in set(stamped) - live:
            if session_id in self.rooms:
                # Ended elsewhere (e.g. judged stale while the database was stuck):
                # stop streaming a session the database no longer calls live.
                logger.warning("session %s was ended elsewhere; stopping it", session_id)
                self.broadcast_stop_soon(session_id, reason="lost")

    async def _worker_loop(self) -> None:
        """Every ``WORKER_HEARTBEAT_S``: stamp this worker (and its load), end the
        sessions of workers that stopped stamping, and cut listeners who may no longer
        receive their broadcast."""
        while True:
            try:
                await self.worker_tick()
            except Exception:
                logger.exception("worker heartbeat failed")
            await asyncio.sleep(settings.HEARTH["WORKER_HEARTBEAT_S"])

    async def worker_tick(self) -> None:
        """One pass of :meth:`_worker_loop` (tests call it directly)."""
        if self.worker and self.channel_name is not None:
            await database_sync_to_async(services.media_worker_heartbeat)(
                sessions=len(self.rooms) + self._starting, **self._worker_identity()
            )
        await database_sync_to_async(services.media_worker_end_dead)(
            exclude_channel=self.channel_name
        )
        if self.worker:
            await self.access_check()

    async def access_check(self) -> None:
        """Cut, on the server, media that its receiver may no longer get.

        A listener whose user is no longer an active friend of the broadcaster
        (unfriended, account deactivated or deleted) or whose page is gone (closed,
        logged out: its presence row is removed) loses its peer connection here,
        whatever its own socket does. A broadcast whose page is gone is detached: it
        is stopped (``disconnected``) after ``BROADCAST_GRACE_S`` unless a page
        re-attaches. Only rooms and listeners present before the query are judged.
        """
        rooms = [room for room in self.rooms.values() if not room.closing]
        for room in rooms:
            listeners = {key: lsn.user_id for key, lsn in room.listeners.items()}
            allowed = await database_sync_to_async(selectors.listeners_allowed)(
                broadcaster_id=room.broadcaster_id, listeners=listeners
            )
            if room.owner_page:
                gone = await database_sync_to_async(selectors.pages_gone)(
                    channel_names=[room.owner_page]
                )
                if gone and not room.closing and room.detach(room.owner_page):
                    continue  # ended after BROADCAST_GRACE_S unless a page re-attaches
            for key, user_id in listeners.items():
                listener = room.listeners.get(key)
                if key in allowed or listener is None or listener.user_id != user_id:
                    continue
                logger.warning(
                    "session %s: listener %s may no longer receive it; cut",
                    room.session_id,
                    user_id,
                )
                await room.remove_listener(key=key, pc=listener.pc)
                await self._reply(
                    key,
                    {
                        "type": "rtc.listen.error",
                        "session_id": room.session_id,
                        "code": "not_allowed",
                        "message": "You can no longer listen to this broadcast.",
                    },
                )

    async def _loop_lag_loop(self) -> None:
        """Measure how late the event loop wakes a 100 ms sleep (``loop_lag``): every
        signaling message, RTP packet and graph step of this process waits that long."""
        while True:
            started = time.monotonic()
            await asyncio.sleep(LOOP_LAG_PROBE_S)
            self.loop_lag.add(time.monotonic() - started - LOOP_LAG_PROBE_S)

    async def _housekeeping_loop(self) -> None:
        """From server start on, every ``HOUSEKEEPING_S``: end sessions of dead
        processes (repairing their recordings), prune stale presence rows, delete
        recordings past ``RECORDING_RETENTION_DAYS`` and queue the compression of
        finished recordings still in WAV (in a background thread)."""
        while True:
            try:
                await database_sync_to_async(services.live_session_end_stale)()
                await database_sync_to_async(presence_prune)()
                await database_sync_to_async(services.recording_delete_expired)()
                services.recording_compress_pending_soon()  # returns at once
            except Exception:
                logger.exception("housekeeping failed")
            await asyncio.sleep(settings.HEARTH["HOUSEKEEPING_S"])

    async def shutdown(self) -> None:
        """Stop every broadcast (finalising recordings) and the background loops."""
        if self.shut_down:
            return
        self.shut_down = True
        self.draining = True
        logger.info("media server shutting down: %d live session(s)", len(self.rooms))
        # Every stop starts now, before any await, so a page whose socket closes
        # meanwhile finds its broadcast already stopping as "server_shutdown".
        stops = [
            asyncio.ensure_future(self.broadcast_stop(sid, reason="server_shutdown"))
            for sid in list(self.rooms)
        ]
        if self.worker and self.channel_name is not None:
            # Advertise capacity 0 at once (no more placements here) and keep stamping
            # while the broadcasts finalise, so nobody judges this worker dead meanwhile.
            with contextlib.suppress(Exception):
                await database_sync_to_async(services.media_worker_heartbeat)(
                    sessions=len(self.rooms), **self._worker_identity()
                )
        await asyncio.gather(*stops, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        if self.worker and self.channel_name is not None:
            try:
                await database_sync_to_async(services.media_worker_unregister)(
                    channel_name=self.channel_name
                )
            except Exception:
                logger.exception("could not remove this media worker's row")
        self.workers.shutdown()


_server: MediaServer | None = None


def media_server() -> MediaServer:
    """This process's :class:`MediaServer` (created on first use).

    Bound to the running event loop: daphne has one for the process's life; a new
    loop (as each async test has) gets a new server.
    """
    global _server
    loop = asyncio.get_running_loop()
    if _server is None or _server.loop is not loop:
        _server = MediaServer(worker=settings.HEARTH["MEDIA_IN_PROCESS"])
    return _server


def media_server_install(server: MediaServer) -> None:
    """Make ``server`` this process's media server (``manage.py mediaworker``)."""
    global _server
    _server = server


def media_server_start_with_daphne() -> None:
    """Start this process's media server (channel, heartbeat, housekeeping) as soon as
    daphne's reactor runs, instead of at the first go-live.

    Daphne installs Twisted's asyncio reactor before it loads the ASGI application.
    The reactor fires ``callWhenRunning`` callbacks from ``startRunning()``, *before*
    it enters ``loop.run_forever()``, so the callback only schedules the start with
    ``callLater(0, …)``, which runs on the asyncio loop once it is running. Does
    nothing outside daphne (tests, management commands).
    """
    if "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    async def started() -> None:
        try:
            await media_server().ensure_started()
        except Exception:
            logger.exception("media server could not start; retrying at the next go-live")

    def start() -> None:
        try:
            media_server().spawn(started())
        except Exception:
            logger.exception("media server could not start; retrying at the next go-live")

    reactor.callWhenRunning(lambda: reactor.callLater(0, start))  # type: ignore[attr-defined]


def _install_shutdown_hook(server: MediaServer) -> None:
    """On SIGTERM/SIGINT under daphne, finish broadcasts before the reactor stops.

    Daphne runs Twisted's asyncio reactor, whose signal handlers call
    ``reactor.stop()``; a "before shutdown" trigger returning a Deferred holds the
    shutdown until every recording is finalised and every peer connection closed.
    """
    if "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import defer, reactor

    def before_shutdown() -> defer.Deferred[None]:
        async def bounded() -> None:
            try:
                await asyncio.wait_for(server.shutdown(), timeout=SHUTDOWN_TIMEOUT_S)
            except TimeoutError:
                logger.error("shutdown took over %.0f s; exiting anyway", SHUTDOWN_TIMEOUT_S)

        return defer.Deferred.fromFuture(asyncio.ensure_future(bounded()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
