"""A simulated Raspberry Pi host: a generated `/sys` and `/proc` tree for `drivers.host`.

`SimHost(root)` writes the files that the driver reads, in the kernel's formats, and
`update()` rewrites them: each call is one step of the random walks (runnable tasks, free
memory, Wi-Fi level), and the load averages decay over the time since the last call, as the
kernel's do. Faults in `faults` show from the next `update()`. Every file is replaced
atomically, so a reader never sees half a file. For one seed and one sequence of
`update(t)` times, the files are the same on every run.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drivers.host import (
    CPU_TEMP_FILE,
    LOADAVG_FILE,
    MEMINFO_FILE,
    SINCE_BOOT_SHIFT,
    THROTTLED_BITS,
    THROTTLED_FILE,
    TIMESYNC_FLAG_FILE,
    WIRELESS_FILE,
)

THERMAL_TYPE_FILE = "sys/class/thermal/thermal_zone0/type"

MEM_TOTAL_KIB = 3_884_192  # a 4 GB Pi 4
OVERHEAT_C = 85.0  # the firmware's soft limit is 80-85 °C; at 85 it throttles hard
UNDER_VOLTAGE_MASK = 1 << THROTTLED_BITS["under_voltage"]
OVERHEAT_MASK = sum(1 << THROTTLED_BITS[name] for name in ("arm_freq_capped", "throttled", "soft_temp_limit"))
PID_MAX = 32_768
FIRST_RECYCLED_PID = 300  # the kernel's RESERVED_PIDS
WIRELESS_EXT = 22  # the Wireless Extensions version that the kernel prints in the header


@dataclass
class SimHostFaults:
    """Faults that tests and the fleet simulator switch on and off at run time."""

    under_voltage: bool = False  # throttled bits 0 and 16
    overheat: bool = False  # CPU at OVERHEAT_C, throttled bits 1-3 and 17-19
    clock_unsynced: bool = False  # no timesync flag file
    missing_thermal: bool = False  # no thermal zone


class SimHost:
    """Keeps a fake `/sys` + `/proc` tree under `root` up to date; see `update()`."""

    def __init__(self, root: Path, *, seed: int = 42, ambient: Callable[[], float] | None = None) -> None:
        self.root = Path(root)
        self.faults = SimHostFaults()
        self._ambient = ambient or (lambda: 20.0)
        self._rng = random.Random(seed)
        self._started = time.monotonic()
        self._t: float | None = None
        self._runnable = 0.5  # tasks wanting a CPU, which the load averages follow
        self._loads = [0.5, 0.5, 0.5]
        self._mem_available_kib = 2_900_000
        self._wifi_dbm = -55.0
        self._last_pid = 1200
        self._since_boot_mask = 0  # "has occurred" bits stay set, as on a Pi, until reboot
        self.update(0.0)

    def update(self, t: float | None = None) -> None:
        """Advance to `t` seconds since start (default: the monotonic time since start) and rewrite."""
        t = time.monotonic() - self._started if t is None else t
        dt = 0.0 if self._t is None else max(0.0, t - self._t)
        self._t = t
        self._advance(dt)
        self._write_files()

    def _advance(self, dt: float) -> None:
        self._runnable = self._wander(self._runnable, mean=0.5, step=0.3, low=0.0, high=4.0)
        # The kernel's exponentially damped averages over 1, 5 and 15 minutes.
        for i, window_s in enumerate((60, 300, 900)):
            decay = math.exp(-dt / window_s)
            self._loads[i] = self._loads[i] * decay + self._runnable * (1 - decay)
        self._mem_available_kib = round(
            self._wander(self._mem_available_kib, mean=2_900_000, step=20_000, low=50_000, high=3_600_000)
        )
        self._wifi_dbm = self._wander(self._wifi_dbm, mean=-55.0, step=1.0, low=-90.0, high=-30.0)
        self._last_pid += self._rng.randint(0, 5)
        if self._last_pid > PID_MAX:
            self._last_pid = FIRST_RECYCLED_PID

    def _wander(self, value: float, *, mean: float, step: float, low: float, high: float) -> float:
        """One step of a random walk pulled back towards `mean`, within [low, high]."""
        value += self._rng.gauss(0, step) - 0.1 * (value - mean)
        return min(high, max(low, value))

    def _cpu_temp_c(self) -> float:
        noise = self._rng.gauss(0, 0.3)
        if self.faults.overheat:
            return OVERHEAT_C + noise
        return self._ambient() + 22.0 + 6.0 * self._loads[0] + noise

    def _throttled_mask(self) -> int:
        now = 0
        if self.faults.under_voltage:
            now |= UNDER_VOLTAGE_MASK
        if self.faults.overheat:
            now |= OVERHEAT_MASK
        self._since_boot_mask |= now << SINCE_BOOT_SHIFT
        return now | self._since_boot_mask

    def _write_files(self) -> None:
        cpu_temp_c = self._cpu_temp_c()
        if self.faults.missing_thermal:
            self._remove(CPU_TEMP_FILE)
            self._remove(THERMAL_TYPE_FILE)
        else:
            self._write(THERMAL_TYPE_FILE, "cpu-thermal\n")
            self._write(CPU_TEMP_FILE, f"{round(cpu_temp_c * 1000)}\n")
        self._write(LOADAVG_FILE, self._loadavg_text())
        self._write(MEMINFO_FILE, self._meminfo_text())
        self._write(WIRELESS_FILE, self._wireless_text())
        self._write(THROTTLED_FILE, f"{self._throttled_mask():x}\n")  # the kernel's "%x\n"
        if self.faults.clock_unsynced:
            self._remove(TIMESYNC_FLAG_FILE)
        else:
            self._write(TIMESYNC_FLAG_FILE, "")

    def _loadavg_text(self) -> str:
        load1, load5, load15 = self._loads
        running = max(1, round(self._runnable))  # the reader itself is always running
        return f"{load1:.2f} {load5:.2f} {load15:.2f} {running}/187 {self._last_pid}\n"

    def _meminfo_text(self) -> str:
        available = self._mem_available_kib
        free = available * 3 // 10
        buffers = available // 50
        cached = available - free - buffers
        lines = [
            ("MemTotal", MEM_TOTAL_KIB),
            ("MemFree", free),
            ("MemAvailable", available),
            ("Buffers", buffers),
            ("Cached", cached),
            ("SwapCached", 0),
            ("Active", MEM_TOTAL_KIB - available),
            ("Inactive", cached // 2),
            ("SwapTotal", 102_396),
            ("SwapFree", 102_396),
            ("Dirty", 120),
            ("Shmem", 8_200),
        ]
        # The kernel pads "Name:" to 16 columns and the number to 8.
        return "".join(f"{name + ':':<16}{kib:>8} kB\n" for name, kib in lines)

    def _wireless_text(self) -> str:
        level = round(self._wifi_dbm)
        quality = min(70, max(0, level + 110))  # brcmfmac's link quality out of 70
        return (
            "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n"
            f" face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | {WIRELESS_EXT}\n"
            # The kernel's "%6s: %04x  %3d%c  %3d%c  %3d%c  %6d %6d %6d %6d %6d   %6d\n"; brcmfmac
            # updates quality and level ('.') but not noise (' ').
            f"{'wlan0':>6}: {0:04x}  {quality:3d}.  {level:3d}.  {-256:3d}   "
            f"{0:6d} {0:6d} {0:6d} {0:6d} {0:6d}   {0:6d}\n"
        )

    def _write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text, encoding="ascii")
        os.replace(temporary, path)

    def _remove(self, relative: str) -> None:
        (self.root / relative).unlink(missing_ok=True)
