"""Where the engine's blocking and CPU work runs, off the event loop.

Three kinds of work never share threads (GStreamer gives each branch its own
streaming thread behind a ``queue``; Hearth goes further and isolates streams):

* **load**: model loading and processor construction (:attr:`Workers.load`);
* **io**: recording writes, file close and repair (:attr:`Workers.io`), so a slow
  disk never delays processing;
* **encode**: shared encoders of the relays (:attr:`Workers.encode`);
* **per-stream processing**: each stream gets its own :class:`StreamWorker`, one
  daemon thread. A call that overruns its deadline is *abandoned*: the worker is
  retired (never reused) and the stream continues on a fresh one, so a processor
  that hangs forever holds one thread of one stream and starves nobody else.
  At most :attr:`Workers.processing_slots` jobs run at once (default: one per CPU),
  so many streams do not oversubscribe the cores the event loop needs; a slot is
  taken and given back on the loop side, so an abandoned job never keeps one.

Audio keeps priority over video: a video job also needs one of
:attr:`Workers.video_slots` (default: one fewer than the processing slots, at least
one), so cameras can never hold every slot while audio blocks wait; and a video
stream's worker thread runs at a lower CPU priority (``nice`` +:data:`VIDEO_NICE`,
Linux per-thread), so on a busy machine the kernel gives audio's 20 ms blocks the CPU
first and the camera loses frames (its source keeps only the newest) instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

logger = logging.getLogger("hearth.media")

T = TypeVar("T")

_worker_ids = itertools.count(1)

VIDEO_NICE = 10
"""Niceness added to a video stream's worker thread (0-19: higher yields the CPU more;
raising it needs no privilege). Each nice step is ~1.25x less CPU weight under Linux
CFS, so +10 gives the audio threads ~10x the camera's share when they compete."""


class DeadlineExceeded(TimeoutError):
    """A job did not finish within its deadline; its worker has been abandoned."""


class StreamWorker:
    """One daemon thread running one stream's jobs in order.

    Daemon, unlike ``ThreadPoolExecutor``'s threads (joined at interpreter exit), so
    an abandoned, forever-hung native call cannot keep the server process alive.

    Args:
        name: Thread name suffix, for logs and ``py-spy`` dumps.
        nice: Niceness added to the thread (0: as the process); where the OS refuses,
            logged and ignored.
    """

    def __init__(self, name: str, *, nice: int = 0) -> None:
        self.name = f"hearth-stream-{name}-{next(_worker_ids)}"
        self.nice = nice
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None
        ] = queue.SimpleQueue()
        self.abandoned = False
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.nice and hasattr(os, "setpriority"):
            try:  # Linux: a thread id names one thread here
                tid = threading.get_native_id()
                os.setpriority(
                    os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.nice
                )
            except OSError as exc:
                logger.warning("%s: cannot lower its priority: %s", self.name, exc)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # delivered to the awaiting coroutine
                future.set_exception(exc)
            else:
                future.set_result(result)

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn()``; returns its future.

        Raises:
            RuntimeError: the worker was abandoned or stopped.
        """
        if self.abandoned:
            raise RuntimeError(f"{self.name} was abandoned")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    async def run(self, fn: Callable[[], T], *, deadline_s: float) -> T:
        """Run ``fn()`` here and await it for at most ``deadline_s`` seconds.

        Raises:
            DeadlineExceeded: it took longer; this worker is now abandoned (the call
                may still be running in its thread and its result is discarded).
            Exception: whatever ``fn`` raised.
        """
        future = self.submit(fn)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=deadline_s)
        except TimeoutError:
            self.abandon()
            raise DeadlineExceeded(f"job on {self.name} overran {deadline_s:.2f} s") from None

    def abandon(self) -> None:
        """Retire this worker: accept no more jobs; its thread ends after its job."""
        if not self.abandoned:
            self.abandoned = True
            logger.warning("abandoning stream worker %s", self.name)
            self._jobs.put(None)

    def stop(self) -> None:
        """Let the thread finish queued jobs, then end (idempotent)."""
        if not self.abandoned:
            self.abandoned = True
            self._jobs.put(None)


class Workers:
    """The executors of one process's media engine.

    Args:
        load_threads: Threads for model loading (DeepFilterNet3 takes ~0.3 s).
        io_threads: Threads for recording writes and closes.
        encode_threads: Threads for the relays' shared encoders (default: CPU count).
        processing_slots: Stream jobs allowed to run at once (default: CPU count).
        video_slots: Video stream jobs allowed to run at once, each also holding a
            processing slot (default: one fewer than the processing slots, at least 1).
    """

    def __init__(
        self,
        *,
        load_threads: int = 2,
        io_threads: int = 2,
        encode_threads: int | None = None,
        processing_slots: int | None = None,
        video_slots: int | None = None,
    ) -> None:
        slots = processing_slots or os.cpu_count() or 2
        self.processing_slots = asyncio.Semaphore(slots)
        self.video_slots = asyncio.Semaphore(video_slots or max(1, slots - 1))
        self.load = ThreadPoolExecutor(load_threads, thread_name_prefix="hearth-load")
        self.io = ThreadPoolExecutor(io_threads, thread_name_prefix="hearth-io")
        self.encode = ThreadPoolExecutor(
            encode_threads or os.cpu_count() or 2, thread_name_prefix="hearth-encode"
        )

    def stream_worker(self, name: str, *, video: bool = False) -> StreamWorker:
        """A new per-stream processing worker (the caller stops or abandons it); a
        video stream's runs at ``nice`` +:data:`VIDEO_NICE`."""
        return StreamWorker(name, nice=VIDEO_NICE if video else 0)

    def shutdown(self) -> None:
        """Stop accepting work; queued jobs are cancelled, running ones finish."""
        for executor in (self.load, self.io, self.encode):
            executor.shutdown(wait=False, cancel_futures=True)
