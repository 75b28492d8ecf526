"""Debounced counting of reed-switch closures on a GPIO input: the rain gauge's and the anemometer's.

A reed switch closes its input to ground; the pull-up holds the input high while the contact is
open. gpiozero reports each edge from its own thread (lgpio's callback thread on a Pi; under
`MockFactory`, whichever thread drives the pin), and the daemon calls `take()` from a worker
thread, so one lock guards the counts.

Debounce: a closure counts only if the contact had been open for at least `debounce_s` before
it. That rejects the chatter of a contact both as it makes and as it breaks, however long it
stays closed (a rule that only spaced counted closures `debounce_s` apart would count the
chatter at the end of a closure longer than `debounce_s`, e.g. cups stopped with the magnet at
the reed). Two counted closures are then always more than `debounce_s` apart, so no fault counts
faster than 1 / debounce_s. The filter is ours and the same on every backend: `MockPin` ignores
gpiozero's `bounce_time`, and lgpio's debounce would behave differently.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpiozero import DigitalInputDevice, Factory
from gpiozero.exc import GPIOPinInUse, PinInvalidPin

from drivers import BusError, DriverError, SensorNotFound

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Closure times kept between two take()s (10 minutes at the anemometer's 112 Hz limit); the count
# stays exact beyond it. Without a cap, a sampler that stops reading would let them pile up.
MAX_KEPT_TIMES = 65_536


def make_pin_factory(pin_factory: str | Factory) -> Factory:
    """A gpiozero pin factory from its configured name, or `pin_factory` itself if it is one.

    `"lgpio"`: the Pi's GPIO through lgpio (an optional dependency, imported only here).
    `"sim"` (or `"mock"`): a new `MockFactory` whose pins stay idle. A simulated node instead
    passes one `MockFactory` object to its drivers and to `simulators.gpio`, which drives its pins.
    """
    if not isinstance(pin_factory, str):
        return pin_factory
    if pin_factory == "lgpio":
        try:
            from gpiozero.pins.lgpio import LGPIOFactory
        except ImportError as err:
            raise DriverError(
                "pin_factory 'lgpio' needs the lgpio package: pip install 'edge-node[pi]'"
            ) from err
        try:
            return LGPIOFactory()
        except Exception as err:  # lgpio.error ("can not open gpiochip"), PinUnknownPi off a Pi
            raise SensorNotFound(f"no GPIO chip through lgpio: {err}") from err
    if pin_factory in ("sim", "mock"):
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    raise DriverError(
        f"unknown pin_factory {pin_factory!r}: expected 'lgpio', 'sim' or a gpiozero pin factory"
    )


@dataclass(frozen=True, slots=True)
class Pulses:
    """What was counted between two `take()`s, on the counter's clock."""

    count: int
    times: tuple[float, ...]  # of each counted closure, oldest first (the latest MAX_KEPT_TIMES)
    rejected: int  # closing edges rejected as bounce
    start: float  # the previous take(), or open()
    end: float  # this take()

    @property
    def seconds(self) -> float:
        return self.end - self.start


class PulseCounter:
    """Counts the closures of a reed switch on GPIO `pin` (BCM numbering); see the module doc."""

    def __init__(
        self,
        pin: int,
        *,
        pin_factory: str | Factory,
        debounce_s: float,
        clock: Clock = time.monotonic,
        name: str = "pulse input",
    ) -> None:
        self.pin = pin
        self.debounce_s = debounce_s
        self.name = f"{name} on GPIO{pin}"
        self.opened_at: float | None = None
        self.counted_total = 0  # over the life of this object, across opens
        self.rejected_total = 0
        self._pin_factory = pin_factory
        self._factory: Factory | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._device: DigitalInputDevice | None = None
        self._restart(clock(), closed=False)

    @property
    def is_open(self) -> bool:
        return self._device is not None

    def open(self) -> None:
        """Claim the pin with its pull-up on. Raises SensorNotFound, BusError or DriverError."""
        if self._device is not None:
            return
        if self._factory is None:
            self._factory = make_pin_factory(self._pin_factory)
        try:
            device = DigitalInputDevice(self.pin, pull_up=True, pin_factory=self._factory)
        except PinInvalidPin as err:
            raise SensorNotFound(f"{self.name}: no such GPIO pin on this board ({err})") from err
        except GPIOPinInUse as err:
            raise BusError(errno.EBUSY, f"{self.name}: the pin is already in use ({err})") from err
        except Exception as err:  # lgpio.error ("GPIO busy", ...); lgpio is an optional import
            raise BusError(errno.EIO, f"{self.name}: cannot claim the pin: {err}") from err
        now = self._clock()
        with self._lock:
            self._restart(now, closed=device.is_active)
            self.opened_at = now
        device.when_activated = self._on_closed
        device.when_deactivated = self._on_opened
        self._device = device

    def close(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            device.close()
        if isinstance(self._pin_factory, str) and self._factory is not None:
            self._factory.close()  # made from a name in open(), so ours to close
            self._factory = None

    def take(self) -> Pulses:
        """The closures since the previous take() (or open()), and start counting afresh."""
        with self._lock:
            now = self._clock()
            times, self._times = self._times, deque(maxlen=MAX_KEPT_TIMES)
            count, rejected, start = self._count, self._rejected, self._since
            self._count = self._rejected = 0
            self._since = now
        return Pulses(count, tuple(times), rejected, start, now)

    def totals(self) -> tuple[int, int]:
        """(counted, rejected) over the life of this counter, without disturbing take()."""
        with self._lock:
            return self.counted_total, self.rejected_total

    def closed_for(self) -> float:
        """How long the contact has been closed without a break; 0.0 while it is open."""
        with self._lock:
            return self._clock() - self._changed_at if self._closed else 0.0

    def listen(self, seconds: float) -> tuple[int, int]:
        """(counted, rejected) over `seconds` of real time, without disturbing take(); opens the
        pin for the while if it is not open. Raises what open() raises."""
        was_open = self.is_open
        self.open()
        try:
            counted_before, rejected_before = self.totals()
            time.sleep(seconds)
            counted, rejected = self.totals()
        finally:
            if not was_open:
                self.close()
        return counted - counted_before, rejected - rejected_before

    def _restart(self, now: float, *, closed: bool) -> None:
        self._count = 0
        self._rejected = 0
        self._times: deque[float] = deque(maxlen=MAX_KEPT_TIMES)
        self._since = now
        self._closed = closed
        # When the contact last changed; open since forever as far as the debounce knows.
        self._changed_at = now if closed else -math.inf

    # Both callbacks read the clock under the lock, so a closure never lands before its batch's start.
    def _on_closed(self) -> None:
        with self._lock:
            now = self._clock()
            if now - self._changed_at >= self.debounce_s:
                self._count += 1
                self.counted_total += 1
                self._times.append(now)
            else:
                self._rejected += 1
                self.rejected_total += 1
            self._closed = True
            self._changed_at = now

    def _on_opened(self) -> None:
        with self._lock:
            self._closed = False
            self._changed_at = self._clock()


class SavedCount:
    """A count that survives restarts: `{key: n}` as JSON in `path` (None: kept in memory only).

    Saved atomically (temporary file, fsync, `os.replace`) when it has changed, at most every
    `min_interval_s` to spare the flash card, and on `flush()`. A missing file starts from 0; an
    unreadable one is logged and starts from 0. A failed save is logged, not raised (the reading
    is good without it) and retried at the next change.
    """

    def __init__(self, path: str | os.PathLike | None, key: str, *, clock: Clock, min_interval_s: float):
        self.path = None if path is None else Path(path)
        self.key = key
        self.min_interval_s = min_interval_s
        self._clock = clock
        self.value = self._load()
        self._saved_value = self.value
        self._saved_at = -math.inf

    def add(self, n: int) -> None:
        self.value += n
        if self._clock() - self._saved_at >= self.min_interval_s:
            self.flush()

    def flush(self) -> None:
        if self.path is None or self.value == self._saved_value:
            return
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "w") as f:
                json.dump({self.key: self.value}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except OSError as err:
            log.warning("cannot save %s to %s: %s", self.key, self.path, err)
            return
        self._saved_value = self.value
        self._saved_at = self._clock()

    def _load(self) -> int:
        if self.path is None:
            return 0
        try:
            value = json.loads(self.path.read_text())[self.key]
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("%s: unreadable %s (%r), starting from 0", self.path, self.key, err)
            return 0
        if type(value) is not int or value < 0:
            log.warning("%s: %s is %r, not a count; starting from 0", self.path, self.key, value)
            return 0
        return value
