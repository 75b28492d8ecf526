"""A serial device on a pseudo-terminal: the pty, its stable path, the device's thread, unplugging.

Any serial code opens `device.port` as it would `/dev/ttyUSB0`. That path is a symlink to the
current pty's slave, so unplugging (`vanish()`) and replugging (`reappear()`) keep it stable.
A pty ignores the baud rate. A subclass implements the device: `_tick(now)` does what is due by
`now` (send a frame), `_next_event(now)` says when it next has something to do, and
`_receive(data, now)` hears the host's bytes. It sends with `_send(frame)`, which applies the
common line faults of `LineFaults` (garbage before a frame, a damaged checksum, a cut-off frame).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import random
import select
import shutil
import tempfile
import threading
import time
import tty
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

IDLE_S = 0.5  # the longest the thread sleeps with nothing to do
GARBAGE_MAX = 16


@dataclass
class LineFaults:
    """Faults of the line, as probabilities per frame sent; True counts as 1.0: every frame."""

    garbage: float = 0.0  # random bytes before the frame
    bad_checksum: float = 0.0  # a wrong checksum byte
    partial_frames: float = 0.0  # the frame cut short
    _device: PtyDevice | None = field(default=None, repr=False, compare=False)

    def vanish(self) -> None:
        """Unplug: close the pty (the reader's next read fails) and remove the port's link."""
        if self._device is not None:
            self._device.vanish()

    def reappear(self) -> None:
        """Plug back in: a new pty behind the same `port` path."""
        if self._device is not None:
            self._device.reappear()


class PtyDevice:
    name = "serial"
    checksum_offset = -1  # which byte of a frame `bad_checksum` damages

    def __init__(self, *, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._dir = tempfile.mkdtemp(prefix=f"sim-{self.name}-")
        self.port = os.path.join(self._dir, f"tty{self.name.upper()}")
        self._master: int | None = None
        self._slave: int | None = None
        self._open_pty()
        self._wake_r, self._wake_w = os.pipe()
        self._requests: queue.SimpleQueue[tuple[str, threading.Event]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the device's part ------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        raise NotImplementedError

    def _next_event(self, now: float) -> float:
        raise NotImplementedError

    def _receive(self, data: bytes, now: float) -> None:
        raise NotImplementedError

    def _line_faults(self) -> LineFaults:
        raise NotImplementedError

    def _plugged(self) -> None:
        """Called on the device's thread when a new pty is in place (forget a partial command)."""

    # -- life cycle -------------------------------------------------------------------------------

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"sim-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._closed:
            return
        if self._thread is not None:
            self._request("stop")
            self._thread.join(timeout=5)
            self._thread = None
        self._close_pty()
        os.close(self._wake_r)
        os.close(self._wake_w)
        shutil.rmtree(self._dir, ignore_errors=True)
        self._closed = True

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def vanish(self) -> None:
        """Unplug: close the pty (the reader's next read fails) and remove the port's link."""
        self._request("vanish")

    def reappear(self) -> None:
        """Plug back in: a new pty behind the same `port` path."""
        self._request("reappear")

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def _request(self, action: str) -> None:
        """Run `action` on the device's thread (which owns the pty), or here if none runs."""
        if self._thread is None or not self._thread.is_alive():
            self._perform(action)
            return
        done = threading.Event()
        self._requests.put((action, done))
        os.write(self._wake_w, b"!")
        if not done.wait(timeout=5):
            raise TimeoutError(f"simulated {self.name} did not {action}")

    def _perform(self, action: str) -> None:
        if action == "vanish":
            self._close_pty()
        elif action == "reappear" and self._master is None:
            self._open_pty()

    # -- the pty ----------------------------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)  # no echo of our own frames before a reader configures the port
        os.set_blocking(master, False)  # a full buffer drops bytes, as a UART overrun would
        link = self.port + ".new"
        os.symlink(os.ttyname(slave), link)
        os.replace(link, self.port)
        # Holding the slave open keeps the master from reporting EIO (and select from spinning)
        # while no reader has the port open.
        self._master, self._slave = master, slave
        self._plugged()

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        try:
            os.unlink(self.port)
        except FileNotFoundError:
            pass

    # -- the device's thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            try:
                self._tick(now)
            except Exception:  # a broken conditions() must not kill the device silently
                log.exception("simulated %s: measurement failed", self.name)
            fds = [self._wake_r] if self._master is None else [self._wake_r, self._master]
            timeout = min(max(self._next_event(now) - time.monotonic(), 0.0), IDLE_S)
            readable, _, _ = select.select(fds, [], [], timeout)
            if self._wake_r in readable:
                os.read(self._wake_r, 64)
                while not self._requests.empty():
                    action, done = self._requests.get()
                    if action == "stop":
                        done.set()
                        return
                    self._perform(action)
                    done.set()
            if self._master is not None and self._master in readable:
                try:
                    data = os.read(self._master, 1024)
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EIO):
                        raise
                    continue
                self._receive(data, time.monotonic())

    def _send(self, frame: bytes) -> None:
        if self._master is None:
            return
        rng, faults = self._rng, self._line_faults()
        out = bytearray()
        if rng.random() < faults.garbage:
            out += rng.randbytes(rng.randint(1, GARBAGE_MAX))
        frame = bytearray(frame)
        if rng.random() < faults.bad_checksum:
            frame[self.checksum_offset] ^= rng.randint(1, 0xFF)
        if rng.random() < faults.partial_frames:
            frame = frame[: rng.randint(1, len(frame) - 1)]
        out += frame
        try:
            os.write(self._master, out)  # a short write loses the rest, like an overrun
        except BlockingIOError:
            pass
