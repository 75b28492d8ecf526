"""Wall clock, boot clock and whether the wall clock can be trusted (DESIGN §3, Clock)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from drivers import host

SYNC_CHECK_S = 1.0  # the sync state changes once a boot: every sampler and send need not stat for it
_sync_checked: dict[str, tuple[float, bool]] = {}


def clock_synced(root: str = "/") -> bool:
    """drivers.host.clock_synced (the one place that decides), asked at most once a second."""
    now = time.monotonic()
    checked = _sync_checked.get(root)
    if checked is None or now - checked[0] >= SYNC_CHECK_S:
        checked = _sync_checked[root] = (now, host.clock_synced(root))
    return checked[1]


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def boottime() -> float:
    """Seconds since boot, counting suspend: the clock that `mono` columns hold."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def format_ts(wall: float) -> str:
    """RFC 3339 UTC with milliseconds, as the wire contract wants."""
    ms = int(wall * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def now_iso() -> str:
    return format_ts(datetime.now(UTC).timestamp())
