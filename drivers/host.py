"""The Raspberry Pi's own health, read from `/sys` and `/proc` under a root directory.

`root` is `/` on a Pi and a generated tree under simulation (`simulators.host.SimHost`).
Every file is optional: a missing or garbled file gives `None` (or an omitted key),
never an exception, except that `PiHealthDriver.read()` raises `SensorFault` when
neither `proc/loadavg` nor `proc/meminfo` can be read (then `root` is not a Linux root).

Sizes are decimal megabytes (10**6 bytes), as the unit "MB" says; `/proc/meminfo`'s
"kB" are KiB and are converted.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

from drivers import ProbeResult, Reading, SensorFault

CPU_TEMP_FILE = "sys/class/thermal/thermal_zone0/temp"
LOADAVG_FILE = "proc/loadavg"
MEMINFO_FILE = "proc/meminfo"
# Newer kernels log a one-time "deprecated, use hwmon" warning when this is first read.
THROTTLED_FILE = "sys/devices/platform/soc/soc:firmware/get_throttled"
TIMESYNC_FLAG_FILE = "run/systemd/timesync/synchronized"
WIRELESS_FILE = "proc/net/wireless"

# Bits of the firmware's throttled word (Raspberry Pi documentation, `vcgencmd get_throttled`).
# The same condition "since boot" is the bit 16 places higher.
THROTTLED_BITS = {
    "under_voltage": 0,
    "arm_freq_capped": 1,
    "throttled": 2,
    "soft_temp_limit": 3,
}
SINCE_BOOT_SHIFT = 16

_CPU_TEMP_RANGE_C = (-40.0, 150.0)
_MB = 1_000_000
_TIME_ERROR = 5  # adjtimex() return value: the kernel clock is not synchronised.


def host_vitals(root: str | os.PathLike = "/", disk_path: str | os.PathLike | None = None) -> dict:
    """The heartbeat's `host` object (DESIGN §4); cheap, JSON-ready, never raises.

    ```
    {"cpu_temp_c": float | None,        # None: no thermal zone
     "load1": float | None,             # None only if proc/loadavg is unreadable
     "mem_available_mb": float | None,  # None only if proc/meminfo is unreadable
     "disk_free_mb": float | None,      # free to unprivileged users on disk_path's filesystem
     "throttled": {                     # only where the firmware file exists
         "raw": int,                    # the firmware's bitmask, e.g. 0x50005
         "under_voltage_now": bool, "arm_freq_capped_now": bool,
         "throttled_now": bool, "soft_temp_limit_now": bool,
         "under_voltage_since_boot": bool, "arm_freq_capped_since_boot": bool,
         "throttled_since_boot": bool, "soft_temp_limit_since_boot": bool},
     "clock_synced": bool}
    ```
    `disk_path` is the buffer's filesystem; by default `root`.
    """
    vitals: dict = {
        "cpu_temp_c": _read_cpu_temp_c(root),
        "load1": _read_load1(root),
        "mem_available_mb": _read_mem_available_mb(root),
        "disk_free_mb": _read_disk_free_mb(root if disk_path is None else disk_path),
    }
    throttled = _read_throttled(root)
    if throttled is not None:
        vitals["throttled"] = decode_throttled(throttled)
    vitals["clock_synced"] = clock_synced(root)
    return vitals


def decode_throttled(mask: int) -> dict:
    """The firmware's bitmask as `{"raw": mask, "<condition>_now": bool, "<condition>_since_boot": bool}`."""
    decoded: dict = {"raw": mask}
    for name, bit in THROTTLED_BITS.items():
        decoded[f"{name}_now"] = bool(mask >> bit & 1)
    for name, bit in THROTTLED_BITS.items():
        decoded[f"{name}_since_boot"] = bool(mask >> (bit + SINCE_BOOT_SHIFT) & 1)
    return decoded


def clock_synced(root: str | os.PathLike = "/") -> bool:
    """Whether the wall clock is synchronised (DESIGN §3 "Clock").

    systemd-timesyncd's flag file under `root`; on the real root (`/`) without that file
    (chrony, ntpd, or timesyncd not yet synced), the kernel's own state from `adjtimex`.
    """
    if os.path.exists(Path(root) / TIMESYNC_FLAG_FILE):  # unlike Path.exists, never raises
        return True
    if os.path.realpath(root) != "/":
        return False
    return _kernel_clock_synced()


class PiHealthDriver:
    """The host as a sensor: CPU temperature, load, free memory and disk, throttling, Wi-Fi.

    `read().values` holds the keys of `units` that could be read: `cpu_temp_c` only with a
    thermal zone, `throttled` (the firmware's raw bitmask as a number, see `decode_throttled`)
    only on a Pi, `wifi_dbm` only with a wireless link.
    """

    units = {
        "cpu_temp_c": "Cel",
        "load1": "1",
        "mem_available_mb": "MB",
        "disk_free_mb": "MB",
        "throttled": "1",
        "wifi_dbm": "dBm",
    }

    def __init__(self, root: str | os.PathLike = "/", *, disk_path: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        self.disk_path = Path(root if disk_path is None else disk_path)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read(self) -> Reading:
        load1 = _read_load1(self.root)
        mem_available_mb = _read_mem_available_mb(self.root)
        if load1 is None and mem_available_mb is None:
            raise SensorFault(f"neither {LOADAVG_FILE} nor {MEMINFO_FILE} readable under {self.root}")
        values = {
            "cpu_temp_c": _read_cpu_temp_c(self.root),
            "load1": load1,
            "mem_available_mb": mem_available_mb,
            "disk_free_mb": _read_disk_free_mb(self.disk_path),
            "throttled": _read_throttled(self.root),
            "wifi_dbm": _read_wifi_dbm(self.root),
        }
        return Reading(values={name: float(value) for name, value in values.items() if value is not None})

    def probe(self) -> ProbeResult:
        try:
            reading = self.read()
        except Exception as err:
            return ProbeResult(found=False, detail=str(err), info={"root": str(self.root)})
        detail = ", ".join(f"{name}={value:g}" for name, value in reading.values.items())
        return ProbeResult(found=True, detail=detail, info={"root": str(self.root), **reading.values})


def _read_text(root: str | os.PathLike, relative: str) -> str | None:
    try:
        return (Path(root) / relative).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None


def _read_cpu_temp_c(root: str | os.PathLike) -> float | None:
    text = _read_text(root, CPU_TEMP_FILE)
    if text is None:
        return None
    try:
        celsius = int(text) / 1000  # millidegrees
    except ValueError:
        return None
    low, high = _CPU_TEMP_RANGE_C
    return round(celsius, 1) if low <= celsius <= high else None


def _read_load1(root: str | os.PathLike) -> float | None:
    text = _read_text(root, LOADAVG_FILE)  # "0.52 0.58 0.59 1/389 12345"
    if text is None:
        return None
    try:
        load1 = float(text.split()[0])
    except (IndexError, ValueError):
        return None
    return load1 if 0 <= load1 < math.inf else None  # also rejects "nan"


def _read_mem_available_mb(root: str | os.PathLike) -> float | None:
    text = _read_text(root, MEMINFO_FILE)  # "MemAvailable:    1234567 kB"
    if text is None:
        return None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == "MemAvailable":
            try:
                kib = int(rest.split()[0])
            except (IndexError, ValueError):
                return None
            return round(kib * 1024 / _MB, 1) if kib >= 0 else None
    return None


def _read_disk_free_mb(path: str | os.PathLike) -> float | None:
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return round(stat.f_bavail * stat.f_frsize / _MB, 1)


def _read_throttled(root: str | os.PathLike) -> int | None:
    # The kernel prints the word with "%x" (no prefix); vcgencmd's "throttled=0x50005" is accepted too.
    # Decimal is not: "10" would be ambiguous.
    text = _read_text(root, THROTTLED_FILE)
    if text is None:
        return None
    text = text.strip().removeprefix("throttled=")
    try:
        mask = int(text, 16)
    except ValueError:
        return None
    return mask if 0 <= mask <= 0xFFFFFFFF else None


def _read_wifi_dbm(root: str | os.PathLike) -> float | None:
    """Signal level of the first wireless interface, when the driver reports it in dBm."""
    text = _read_text(root, WIRELESS_FILE)
    if text is None:
        return None
    # Two header lines, then " wlan0: 0000   56.  -54.  -256  ..." (status, link, level, noise).
    for line in text.splitlines()[2:]:
        _, _, stats = line.partition(":")
        fields = stats.split()
        try:
            level = float(fields[2].rstrip("."))
        except (IndexError, ValueError):
            continue
        # Levels not in dBm (relative 0..100, or 0 when not associated) say nothing useful.
        return level if -120 <= level < 0 else None
    return None


@functools.cache
def _adjtimex():
    import ctypes  # here, not at the top: most nodes answer from timesyncd's flag file

    try:
        return ctypes.CDLL(None, use_errno=True).adjtimex  # the process's own libc
    except (OSError, AttributeError):
        return None


def _kernel_clock_synced() -> bool:
    adjtimex = _adjtimex()
    if adjtimex is None:
        return False
    # modes = 0 (the zeroed buffer) only reads; 512 bytes hold struct timex on every ABI (208 on 64-bit).
    import ctypes

    timex = ctypes.create_string_buffer(512)
    state = adjtimex(timex)
    return state not in (-1, _TIME_ERROR)
