"""A private network namespace for tests whose peers must stay off the machine's LAN.

The namespace has only a loopback interface, so whatever runs inside it (daphne and
Chromium in the browser test) can reach nothing but 127.0.0.1 — and Chromium's
WebRTC stack gathers no LAN candidates at all. Needs root (``ip netns``), as CI has.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000  # <linux/sched.h>

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def network_namespace(prefix: str = "hearth-test") -> Iterator[str]:
    """Create a namespace with ``lo`` up; delete it afterwards. Yields its name."""
    name = f"{prefix}-{os.getpid()}"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}) failed: {os.strerror(errno)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the calling thread inside namespace ``name`` for the block.

    Processes started in the block (``subprocess``, Playwright's driver) stay in the
    namespace for their whole life; sockets opened before or after stay outside.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(str(Path("/run/netns") / name))
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "could not return to the original namespace")
    finally:
        os.close(own)
