"""Sensirion SHT4x (SHT40/41/45: temperature and humidity) on I2C, through Adafruit's driver.

Adafruit_CircuitPython_SHT4x sends the commands, waits the conversion time and checks the CRC-8
of every word; this module gives it a bus (`drivers.buses.I2CBus`), decides when to heat, and
translates its errors, once, into the `DriverError` tree: no acknowledge at open is
SensorNotFound, a CRC mismatch (its RuntimeError) SensorFault, any other OSError BusError.

Measurement: high repeatability (0xFD, 8.3 ms at most; Adafruit waits 10 ms), no heater: the
datasheet's accuracy (+-0.2 Cel, +-1.8 %RH typical for the SHT40). Adafruit clamps humidity to
0..100 %RH, as Sensirion recommends.

The heater, against condensation. A film of water on the sensor (fog, dew, rain driven into the
housing) makes it read about 100 %RH until the water has gone, and long exposure above ~80 %RH
makes the reading creep upwards; Sensirion's remedy is a short heater pulse. Policy here:
- when a reading says `HEATER_ABOVE_RH` (95 %RH) or more, the driver fires the strongest
  pulse, 200 mW for 1 s (command 0x39), right after taking that reading (which is returned as
  measured, before the pulse);
- at most once every `heater_every_s` (default 300 s): 1.1 s of heat per 300 s is a 0.4 % duty
  cycle, far below the 10 % the datasheet allows the heater, and too little to warm the air
  around the sensor;
- the die needs time to cool back to the air's temperature, so the next read() waits until
  `COOL_DOWN_S` (10 s: six time constants of the die's cooling) after the pulse; with the
  default 10 s interval it rarely waits at all.
Pulses are counted in status() (`heater_pulses`). `heater = false` in the config turns it off.

Quality: `out_of_range` outside the operating range (-40..125 Cel); `stuck` after `STUCK_AFTER`
identical readings (16-bit values with ~0.01 Cel and ~0.01 %RH steps and more noise than that).
"""

from __future__ import annotations

import errno
import logging
import time
from collections import deque
from collections.abc import Callable

from drivers import BusError, DriverError, ProbeResult, Reading, SensorFault, SensorNotFound
from drivers.buses import I2CBus

log = logging.getLogger(__name__)

ADDRESS = 0x44  # SHT4x-A (0x45 and 0x46 for the -B and -C variants)
OPERATING_RANGE_C = (-40.0, 125.0)
HEATER_ABOVE_RH = 95.0
HEATER_EVERY_S = 300.0
COOL_DOWN_S = 10.0
STUCK_AFTER = 5

_NO_ACK = {errno.ENXIO, errno.EREMOTEIO}


class SHT4xDriver:
    units = {"temperature": "Cel", "humidity": "%RH"}

    def __init__(
        self,
        bus: I2CBus,
        address: int = ADDRESS,
        *,
        heater: bool = True,
        heater_every_s: float = HEATER_EVERY_S,
        cool_down_s: float = COOL_DOWN_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bus = bus
        self.address = address
        self.heater = heater
        self.heater_every_s = heater_every_s
        self.cool_down_s = cool_down_s
        self.serial_number: int | None = None
        self.heater_pulses = 0
        self._clock = clock
        self._sleep = sleep
        self._sensor = None
        self._heated_at: float | None = None
        self._recent: deque[tuple[float, float]] = deque(maxlen=STUCK_AFTER)

    def open(self) -> None:
        """Find and reset the chip, read its serial number. Raises SensorNotFound, SensorFault or BusError."""
        import adafruit_sht4x  # pulls in adafruit_bus_device and Blinka's micropython shim, not board

        self._sensor = None
        self._recent.clear()
        try:
            sensor = adafruit_sht4x.SHT4x(self.bus, self.address)  # probes, then soft-resets
            sensor.mode = adafruit_sht4x.Mode.NOHEAT_HIGHPRECISION
            self.serial_number = sensor.serial_number
        except ValueError as err:
            raise self._not_found(err) from err
        except RuntimeError as err:
            raise SensorFault(f"SHT4x at {self.address:#04x}: {err} (serial number)") from err
        except OSError as err:
            raise self._bus_error(err) from err
        self._sensor = sensor
        log.info(
            "SHT4x at %#04x: serial %08x, high repeatability, heater %s",
            self.address,
            self.serial_number,
            "on above 95 %RH" if self.heater else "off",
        )

    def read(self) -> Reading:
        """One reading; (re)opens first if the last open or transfer failed."""
        if self._sensor is None:
            self.open()
        self._cool_down()
        try:
            temperature, humidity = self._sensor.measurements
        except OSError as err:
            self._sensor = None
            raise self._bus_error(err) from err
        except RuntimeError as err:
            self._sensor = None
            raise SensorFault(f"SHT4x at {self.address:#04x}: {err}") from err
        values = {"temperature": round(float(temperature), 2), "humidity": round(float(humidity), 1)}
        quality = []
        if not OPERATING_RANGE_C[0] <= temperature <= OPERATING_RANGE_C[1]:
            quality.append("out_of_range")
        self._recent.append((temperature, humidity))
        if len(self._recent) == STUCK_AFTER and len(set(self._recent)) == 1:
            quality.append("stuck")
        if self.heater and humidity >= HEATER_ABOVE_RH:
            self._heat()
        return Reading(values=values, quality=tuple(quality))

    def close(self) -> None:
        self._sensor = None
        self._recent.clear()

    def status(self) -> dict[str, object]:
        out: dict[str, object] = {"heater_pulses": self.heater_pulses}
        if self.serial_number is not None:
            out["serial_number"] = f"{self.serial_number:08x}"
        return out

    def probe(self) -> ProbeResult:
        """Detect from scratch (reopen) and take one reading as the self-test. Never raises."""
        info: dict[str, object] = {"address": self.address, "serial_number": None}
        try:
            self.open()
            reading = self.read()
        except DriverError as err:
            return ProbeResult(False, str(err), info)
        except Exception as err:  # provisioning needs an answer, not a traceback
            return ProbeResult(False, f"SHT4x at {self.address:#04x}: unexpected {err!r}", info)
        info.update(
            serial_number=f"{self.serial_number:08x}",
            values=dict(reading.values),
            quality=list(reading.quality),
        )
        v = reading.values
        detail = (
            f"SHT4x at {self.address:#04x}: serial {self.serial_number:08x}, "
            f"{v['temperature']} Cel, {v['humidity']} %RH"
        )
        if reading.quality:
            detail += f" ({', '.join(reading.quality)})"
        return ProbeResult(True, detail, info)

    # -- the heater ----------------------------------------------------------------------------

    def _heat(self) -> None:
        import adafruit_sht4x

        now = self._clock()
        if self._heated_at is not None and now - self._heated_at < self.heater_every_s:
            return
        log.info(
            "SHT4x at %#04x: humidity >= %g %%RH, heater pulse 200 mW for 1 s", self.address, HEATER_ABOVE_RH
        )
        self._heated_at = now
        self.heater_pulses += 1
        self._sensor.mode = adafruit_sht4x.Mode.HIGHHEAT_1S
        try:
            _ = self._sensor.measurements  # the pulse; its measurement is of a hot die: discarded
        except (OSError, RuntimeError) as err:
            log.warning("SHT4x at %#04x: heater pulse failed: %s", self.address, err)
        finally:
            self._sensor.mode = adafruit_sht4x.Mode.NOHEAT_HIGHPRECISION

    def _cool_down(self) -> None:
        if self._heated_at is None:
            return
        wait = self._heated_at + self.cool_down_s - self._clock()
        if wait > 0:
            self._sleep(wait)

    # -- errors --------------------------------------------------------------------------------

    def _not_found(self, err: ValueError) -> DriverError:
        """adafruit_bus_device's probe found no ACK; its cause tells a NACK from a broken bus."""
        cause = err.__context__
        if isinstance(cause, OSError) and cause.errno not in _NO_ACK:
            return self._bus_error(cause)
        return SensorNotFound(f"no device answers at I2C address {self.address:#04x}")

    def _bus_error(self, err: OSError) -> BusError:
        reason = err.strerror or str(err)
        return BusError(err.errno, f"I2C transfer with the SHT4x at {self.address:#04x} failed: {reason}")
