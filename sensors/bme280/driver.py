"""Bosch BME280 (temperature, humidity, pressure) on I2C, through Adafruit's driver.

Adafruit_CircuitPython_BME280 does the register work and Bosch's compensation; this module
gives it a bus (`drivers.buses.I2CBus`), configures it for weather monitoring and translates
its errors, once, into the `DriverError` tree.

Settings follow the datasheet's "weather monitoring" case (BST-BME280-DS002 §3.5.1): forced
mode, so the chip sleeps between reads and does not warm itself; oversampling x1 for
temperature, pressure and humidity; IIR filter off. Adafruit's properties each start their
own forced conversion, so one `read()` makes three, about 30 ms of blocking I/O on a real
chip (table 13: at most 9.3 ms each) plus Adafruit's status polling.
"""

from __future__ import annotations

import errno
import logging
import re
from collections import deque

from drivers import BusError, DriverError, ProbeResult, Reading, SensorFault, SensorNotFound, WrongDevice
from drivers.buses import I2CBus

log = logging.getLogger(__name__)

CHIP_ID_BME280 = 0x60
# What else answers the chip id register (0xD0) at 0x76/0x77.
OTHER_CHIPS = {0x55: "BMP180", 0x56: "BMP280", 0x57: "BMP280", 0x58: "BMP280", 0x61: "BME680"}

# Operating range (datasheet §1, table 1).
OPERATING_RANGE = {"temperature": (-40.0, 85.0), "humidity": (0.0, 100.0), "pressure": (300.0, 1100.0)}
# This many bit-identical readings in a row mean frozen data registers: with about one LSB of
# noise on each value at x1 (and 0.02 %RH on 0.008 %RH steps), a live sensor repeats all three
# values five times running with a probability below 1e-8.
STUCK_AFTER = 5

# Linux's fault codes for "the address was not acknowledged" (Documentation/i2c/fault-codes.rst).
_NO_ACK = {errno.ENXIO, errno.EREMOTEIO}
_CHIP_ID_IN_MESSAGE = re.compile(r"Chip ID (0x[0-9a-fA-F]+)")


class BME280Driver:
    units = {"temperature": "Cel", "humidity": "%RH", "pressure": "hPa"}

    def __init__(self, bus: I2CBus, address: int = 0x76) -> None:
        self.bus = bus
        self.address = address
        self.chip_id: int | None = None  # what register 0xD0 said at the last open, if anything
        self._sensor = None
        self._recent: deque[tuple[float, float, float]] = deque(maxlen=STUCK_AFTER)

    def open(self) -> None:
        """Find, reset and configure the chip. Raises SensorNotFound, WrongDevice or BusError."""
        from adafruit_bme280 import advanced  # pulls in Blinka's busio, but not its board detection

        self._sensor = None
        self._recent.clear()
        try:
            sensor = advanced.Adafruit_BME280_I2C(self.bus, self.address)
            sensor.overscan_temperature = advanced.OVERSCAN_X1
            sensor.overscan_pressure = advanced.OVERSCAN_X1
            sensor.overscan_humidity = advanced.OVERSCAN_X1
            # Left in sleep mode, Adafruit's driver forces one conversion per value read.
        except ValueError as err:
            raise self._not_found(err) from err
        except RuntimeError as err:
            raise self._wrong_device(err) from err
        except OSError as err:
            raise self._bus_error(err) from err
        self.chip_id = CHIP_ID_BME280
        self._sensor = sensor
        log.info("BME280 at 0x%02x: forced mode, oversampling x1, filter off", self.address)

    def read(self) -> Reading:
        """One reading; (re)opens first if the last open or transfer failed, so a sensor that
        comes back (hot-plugged, bus glitch over) recovers without a restart."""
        if self._sensor is None:
            self.open()
        try:
            raw = (self._sensor.temperature, self._sensor.humidity, self._sensor.pressure)
        except OSError as err:
            self._sensor = None
            raise self._bus_error(err) from err
        except ArithmeticError as err:  # Adafruit's guard against a zero dig_P1
            self._sensor = None
            raise SensorFault(f"BME280 at {self.address:#04x}: unusable calibration data") from err

        temperature, humidity, pressure = raw
        # At x1: 0.005 Cel and 2.6 Pa steps (datasheet tables 3, 5); humidity steps are 0.008 %RH,
        # but its accuracy is +-3 %RH.
        values = {
            "temperature": round(temperature, 2),
            "humidity": round(float(humidity), 1),
            "pressure": round(pressure, 2),
        }
        quality = []
        if any(not lo <= values[name] <= hi for name, (lo, hi) in OPERATING_RANGE.items()):
            quality.append("out_of_range")
        self._recent.append(raw)
        if len(self._recent) == STUCK_AFTER and len(set(self._recent)) == 1:
            quality.append("stuck")
        return Reading(values=values, quality=tuple(quality))

    def close(self) -> None:
        # Nothing to power down: in forced mode the chip is asleep between conversions.
        self._sensor = None
        self._recent.clear()

    def probe(self) -> ProbeResult:
        """Detect from scratch (reopen) and take one reading as the self-test. Never raises."""
        info: dict[str, object] = {"chip_id": None, "address": self.address}
        try:
            self.open()
            reading = self.read()
        except DriverError as err:
            info["chip_id"] = self.chip_id
            return ProbeResult(False, str(err), info)
        except Exception as err:  # provisioning needs an answer, not a traceback
            return ProbeResult(False, f"BME280 at {self.address:#04x}: unexpected {err!r}", info)
        info.update(chip_id=self.chip_id, values=dict(reading.values), quality=list(reading.quality))
        v = reading.values
        detail = (
            f"BME280 at {self.address:#04x}: {v['temperature']} Cel, {v['humidity']} %RH, {v['pressure']} hPa"
        )
        if reading.quality:
            detail += f" ({', '.join(reading.quality)})"
        return ProbeResult(True, detail, info)

    def _not_found(self, err: ValueError) -> DriverError:
        """adafruit_bus_device's probe found no ACK; its cause tells a NACK from a broken bus."""
        self.chip_id = None
        cause = err.__context__
        if isinstance(cause, OSError) and cause.errno not in _NO_ACK:
            return self._bus_error(cause)
        return SensorNotFound(f"no device answers at I2C address {self.address:#04x}")

    def _wrong_device(self, err: RuntimeError) -> DriverError:
        match = _CHIP_ID_IN_MESSAGE.search(str(err))
        if match is None:
            self.chip_id = None
            return SensorFault(f"BME280 at {self.address:#04x}: {err}")
        self.chip_id = int(match.group(1), 16)
        other = OTHER_CHIPS.get(self.chip_id, "an unknown chip")
        return WrongDevice(
            f"{other} (chip id {self.chip_id:#04x}) answers at {self.address:#04x}, not a BME280 "
            f"(chip id {CHIP_ID_BME280:#04x})"
        )

    def _bus_error(self, err: OSError) -> BusError:
        reason = err.strerror or str(err)
        if err.filename:
            reason += f": {err.filename}"
        return BusError(err.errno, f"I2C transfer with the BME280 at {self.address:#04x} failed: {reason}")
