"""A register-level BME280 (Bosch BST-BME280-DS002) on the simulated I2C bus.

Measurements turn the modelled temperature, humidity and pressure into raw ADC values by
inverting the datasheet's compensation formulas (section 4.2.3, and 8.1 of the BMP280
datasheet for the floating-point form), so any driver that compensates as Bosch says,
Adafruit's included, reads the modelled environment back.

Modelled: chip id, soft reset, ctrl_hum (effective at the next ctrl_meas write, §5.4.3),
sleep/forced/normal modes, resolution by oversampling (16 bits at x1 to 20 at x16),
skipped measurements (0x80000 / 0x8000), burst reads with
auto-increment and register-pair writes (§6.2.1). Not modelled: the IIR filter, the
standby timing and conversion time (status never shows `measuring`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import astuple, dataclass

from simulators.i2c import nack

# Register map (datasheet table 18).
REG_CALIB_00 = 0x88  # ..0xA1: dig_T1..dig_P9, reserved, dig_H1
REG_CHIP_ID = 0xD0
REG_RESET = 0xE0
REG_CALIB_26 = 0xE1  # ..0xE7: dig_H2..dig_H6
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_PRESS_MSB = 0xF7  # press 0xF7..0xF9, temp 0xFA..0xFC, hum 0xFD..0xFE
REG_TEMP_MSB = 0xFA
REG_HUM_MSB = 0xFD

CHIP_ID_BME280 = 0x60
RESET_COMMAND = 0xB6
MODE_SLEEP = 0b00
MODE_NORMAL = 0b11  # 0b01 and 0b10 are both forced mode
SKIPPED_20BIT = 0x80000  # data register content when a measurement is skipped
SKIPPED_16BIT = 0x8000

_ADC20_MAX = (1 << 20) - 1
_ADC16_MAX = (1 << 16) - 1


@dataclass(frozen=True, slots=True)
class Calibration:
    """Trimming parameters, named as in datasheet table 16."""

    dig_T1: int
    dig_T2: int
    dig_T3: int
    dig_P1: int
    dig_P2: int
    dig_P3: int
    dig_P4: int
    dig_P5: int
    dig_P6: int
    dig_P7: int
    dig_P8: int
    dig_P9: int
    dig_H1: int
    dig_H2: int
    dig_H3: int
    dig_H4: int
    dig_H5: int
    dig_H6: int

    @classmethod
    def from_registers(cls, data: bytes) -> Calibration:
        """Parse the 33 bytes of registers 0x88..0xA1 followed by 0xE1..0xE7."""
        if len(data) != 33:
            raise ValueError(f"calibration is 26 + 7 register bytes, got {len(data)}")
        tp = struct.unpack_from("<HhhHhhhhhhhh", data)
        h1 = data[25]
        h2, h3, e4, e5, e6, h6 = struct.unpack_from("<hBbBbb", data, 26)
        return cls(*tp, h1, h2, h3, (e4 << 4) | (e5 & 0x0F), (e6 << 4) | (e5 >> 4), h6)

    def to_registers(self) -> bytes:
        """The inverse of `from_registers`: dig_H4 and dig_H5 share register 0xE5."""
        c = self
        tp = struct.pack("<HhhHhhhhhhhh", *astuple(self)[:12])
        e5 = ((c.dig_H5 & 0x0F) << 4) | (c.dig_H4 & 0x0F)
        h = struct.pack("<hBbBbb", c.dig_H2, c.dig_H3, c.dig_H4 >> 4, e5, c.dig_H5 >> 4, c.dig_H6)
        return tp + bytes([0, c.dig_H1]) + h


# dig_T and dig_P from the worked example (BMP280 datasheet §3.12, the BME280 shares them);
# dig_H as read from a typical BME280 breakout, since Bosch publishes no humidity example.
DATASHEET_CALIBRATION = Calibration(
    27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000, 75, 362, 0, 313, 50, 30
)


def compensate_temperature(adc_t: int, cal: Calibration) -> tuple[float, float]:
    """Datasheet floating-point formula: (temperature in degC, t_fine).

    t_fine stays unrounded, as in the worked example; Bosch's code and Adafruit's truncate it
    to an integer, which moves pressure by about 0.01 Pa.
    """
    var1 = (adc_t / 16384.0 - cal.dig_T1 / 1024.0) * cal.dig_T2
    var2 = (adc_t / 131072.0 - cal.dig_T1 / 8192.0) ** 2 * cal.dig_T3
    return (var1 + var2) / 5120.0, var1 + var2


def compensate_pressure(adc_p: int, t_fine: float, cal: Calibration) -> float:
    """Datasheet floating-point formula: pressure in Pa."""
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal.dig_P6 / 32768.0
    var2 = var2 + var1 * cal.dig_P5 * 2.0
    var2 = var2 / 4.0 + cal.dig_P4 * 65536.0
    var1 = (cal.dig_P3 * var1 * var1 / 524288.0 + cal.dig_P2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.dig_P1
    if var1 == 0.0:
        return 0.0  # the datasheet's guard against division by zero
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal.dig_P9 * p * p / 2147483648.0
    var2 = p * cal.dig_P8 / 32768.0
    return p + (var1 + var2 + cal.dig_P7) / 16.0


def compensate_humidity(adc_h: int, t_fine: float, cal: Calibration) -> float:
    """Datasheet floating-point formula (Bosch BME280_driver), before clamping to 0..100 %RH."""
    var1 = t_fine - 76800.0
    var2 = cal.dig_H4 * 64.0 + cal.dig_H5 / 16384.0 * var1
    var5 = 1.0 + cal.dig_H3 / 67108864.0 * var1
    var6 = 1.0 + cal.dig_H6 / 67108864.0 * var1 * var5
    h = (adc_h - var2) * (cal.dig_H2 / 65536.0) * var5 * var6
    return h * (1.0 - cal.dig_H1 * h / 524288.0)


def _invert(f: Callable[[int], float], target: float, hi: int, *, decreasing: bool = False) -> int:
    """The raw value in 0..hi whose compensated value is nearest `target`, for monotonic `f`.

    The compensation curves are smooth and nearly straight: secant steps reach the answer's
    neighbourhood in three or four evaluations, and a short walk then brackets it exactly. A read
    inverts three curves; a bisection's twenty-odd evaluations each were most of its cost."""
    sign = -1.0 if decreasing else 1.0
    seen: dict[int, float] = {}

    def g(raw: int) -> float:  # increasing in raw, zero at the target
        if raw not in seen:
            seen[raw] = sign * (f(raw) - target)
        return seen[raw]

    x0, x1 = 0, hi
    g0, g1 = g(x0), g(x1)
    if g0 >= 0:
        return 0
    if g1 < 0:
        return hi
    for _ in range(40):
        if g1 == g0:
            break
        x2 = min(max(round(x1 - g1 * (x1 - x0) / (g1 - g0)), 0), hi)
        if abs(x2 - x1) <= 1:
            x1 = x2
            break
        x0, g0, x1, g1 = x1, g1, x2, g(x2)
    lo = x1  # walk to the bracket g(lo) < 0 <= g(lo + 1)
    while lo > 0 and g(lo) >= 0:
        lo -= 1
    while lo < hi and g(lo + 1) < 0:
        lo += 1
    up = min(lo + 1, hi)
    return lo if abs(g(lo)) <= abs(g(up)) else up


def raw_values(
    temperature_c: float, humidity_rh: float, pressure_hpa: float, cal: Calibration
) -> tuple[int, int, int]:
    """(adc_T, adc_P, adc_H) that compensate to the given values."""
    adc_t = _invert(lambda a: compensate_temperature(a, cal)[0], temperature_c, _ADC20_MAX)
    t_fine = compensate_temperature(adc_t, cal)[1]
    adc_p = _invert(
        lambda a: compensate_pressure(a, t_fine, cal), pressure_hpa * 100.0, _ADC20_MAX, decreasing=True
    )
    adc_h = _invert(lambda a: compensate_humidity(a, t_fine, cal), humidity_rh, _ADC16_MAX)
    return adc_t, adc_p, adc_h


def _at_resolution(adc: int, osrs: int) -> int:
    """Oversampling x1 gives 16 bits, each doubling one more, up to 20 bits at x16 (tables 3, 5)."""
    step = 1 << max(0, 5 - osrs)
    return min(round(adc / step) * step, _ADC20_MAX - step + 1)


@dataclass
class BME280Faults:
    """Faults injectable at run time."""

    nack: bool = False  # every transfer raises OSError(EREMOTEIO)
    chip_id: int | None = None  # the chip id register answers this (0x58: a BMP280)
    stuck: bool = False  # data registers stop updating


class SimBME280:
    """`conditions()` returns (temperature_c, humidity_rh, pressure_hpa) at the time of a measurement."""

    def __init__(
        self,
        conditions: Callable[[], tuple[float, float, float]],
        *,
        calibration: bytes | None = None,
        chip_id: int = CHIP_ID_BME280,
    ) -> None:
        self._conditions = conditions
        self.calibration = (
            DATASHEET_CALIBRATION if calibration is None else Calibration.from_registers(calibration)
        )
        self.faults = BME280Faults()
        self._regs = bytearray(256)
        cal = self.calibration.to_registers()
        self._regs[REG_CALIB_00 : REG_CALIB_00 + 26] = cal[:26]
        self._regs[REG_CALIB_26 : REG_CALIB_26 + 7] = cal[26:]
        self._regs[REG_CHIP_ID] = chip_id
        self._pointer = 0
        self._osrs_h = 0
        self._last_raw: tuple[tuple, tuple[int, int, int]] | None = None
        self._reset()

    def write(self, data: bytes) -> None:
        if self.faults.nack:
            raise nack()
        if data:
            self._pointer = data[0]
        for register, value in zip(data[0::2], data[1::2], strict=False):
            self._write_register(register, value)

    def read(self, n: int) -> bytes:
        if self.faults.nack:
            raise nack()
        if self._regs[REG_CTRL_MEAS] & 0b11 == MODE_NORMAL and self._pointer >= REG_PRESS_MSB:
            self._measure()
        out = bytearray(n)
        for i in range(n):
            out[i] = self._register(self._pointer)
            self._pointer = (self._pointer + 1) & 0xFF
        return bytes(out)

    def _register(self, register: int) -> int:
        if register == REG_CHIP_ID and self.faults.chip_id is not None:
            return self.faults.chip_id
        return self._regs[register]

    def _write_register(self, register: int, value: int) -> None:
        if register == REG_RESET:
            if value == RESET_COMMAND:
                self._reset()
        elif register == REG_CTRL_HUM:
            self._regs[REG_CTRL_HUM] = value & 0b111
        elif register == REG_CTRL_MEAS:
            self._regs[REG_CTRL_MEAS] = value
            self._osrs_h = self._regs[REG_CTRL_HUM]
            if value & 0b11 not in (MODE_SLEEP, MODE_NORMAL):
                self._measure()
                self._regs[REG_CTRL_MEAS] &= ~0b11 & 0xFF  # forced: back to sleep when done
        elif register == REG_CONFIG:
            self._regs[REG_CONFIG] = value & 0b1111_1101  # bit 1 is reserved
        # Everything else is read-only.

    def _reset(self) -> None:
        """Power-on state (datasheet table 18 reset values)."""
        for register in (REG_CTRL_HUM, REG_STATUS, REG_CTRL_MEAS, REG_CONFIG):
            self._regs[register] = 0
        self._osrs_h = 0
        self._store(SKIPPED_20BIT, SKIPPED_20BIT, SKIPPED_16BIT)

    def _measure(self) -> None:
        if self.faults.stuck:
            return
        conditions = self._conditions()
        if self._last_raw is None or self._last_raw[0] != conditions:  # the same weather, the same raw
            self._last_raw = (conditions, raw_values(*conditions, self.calibration))
        adc_t, adc_p, adc_h = self._last_raw[1]
        osrs_t = self._regs[REG_CTRL_MEAS] >> 5
        osrs_p = (self._regs[REG_CTRL_MEAS] >> 2) & 0b111
        self._store(
            _at_resolution(adc_t, osrs_t) if osrs_t else SKIPPED_20BIT,
            _at_resolution(adc_p, osrs_p) if osrs_p else SKIPPED_20BIT,
            adc_h if self._osrs_h else SKIPPED_16BIT,
        )

    def _store(self, adc_t: int, adc_p: int, adc_h: int) -> None:
        # 20-bit values sit left-aligned in msb, lsb, xlsb[7:4].
        self._regs[REG_PRESS_MSB : REG_PRESS_MSB + 3] = (adc_p << 4).to_bytes(3, "big")
        self._regs[REG_TEMP_MSB : REG_TEMP_MSB + 3] = (adc_t << 4).to_bytes(3, "big")
        self._regs[REG_HUM_MSB : REG_HUM_MSB + 2] = adc_h.to_bytes(2, "big")
