"""systemd's notify protocol (sd_notify(3)): READY, WATCHDOG, STATUS, STOPPING.

systemd-python's `systemd.daemon.notify` is used where it is installed; otherwise a datagram
to `$NOTIFY_SOCKET` does the same. Without `$NOTIFY_SOCKET` (not under systemd) every call is
a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

try:  # systemd-python: present where the distribution's python3-systemd is installed
    from systemd import daemon as _sd_daemon
except ImportError:
    _sd_daemon = None

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        # systemd-python reads the process environment itself; use it only for that one.
        self._sd_notify = _sd_daemon.notify if (_sd_daemon is not None and environ is None) else None
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> None:
        if self.address is None:
            return
        if self._sd_notify is not None:
            self._sd_notify("\n".join(fields))
            return
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                # Non-blocking: a receiver that does not read must never stall the event loop.
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(message, self.address)
        except OSError as err:  # systemd gone or its queue full: never fatal for the daemon
            if not self._warned:
                log.warning("sd_notify to %r failed: %s", self.address, err)
                self._warned = True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def extend_timeout(self, seconds: float, status: str) -> None:
        """Ask systemd for more time to start (checking a large buffer on a slow card)."""
        self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}", f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):  # abstract namespace
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    log.warning("ignoring NOTIFY_SOCKET=%r: not a unix socket path", value)
    return None


def _watchdog_interval(env: dict[str, str] | os._Environ) -> float | None:
    """Half of `$WATCHDOG_USEC`, when the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
