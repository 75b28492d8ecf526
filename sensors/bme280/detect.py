"""`edge-node detect` for the BME280, on real buses or on a simulated node alike."""

from __future__ import annotations

from sensors.component import describe_error
from sensors.i2c_detect import answering_buses, locked

from .driver import CHIP_ID_BME280, OTHER_CHIPS, BME280Driver

BME280_ADDRESSES = (0x76, 0x77)
REG_CHIP_ID = 0xD0
BMP280_CHIP_IDS = (0x56, 0x57, 0x58)


def _read_chip_id(bus, address: int) -> int:
    buffer = bytearray(1)
    with locked(bus):
        bus.writeto_then_readfrom(address, bytes([REG_CHIP_ID]), buffer)
    return buffer[0]


def _chip_name(chip_id: int) -> str:
    return "BME280" if chip_id == CHIP_ID_BME280 else OTHER_CHIPS.get(chip_id, "an unknown chip")


def detect(probe) -> None:
    """Every I2C bus is scanned; a device at 0x76 or 0x77 is told apart by its chip id (register
    0xD0): a BME280 (0x60) is then read once through its driver; a BMP280 (0x56-0x58: no
    humidity), BMP180 or BME680 is reported as found but wrong."""
    with probe.report.step("detect.bme280") as outcome:
        devices: dict[str, list[str]] = {}
        candidates: list[dict] = []
        problems: list[str] = []  # bus-level, worst first
        wrong: list[str] = []  # something else answers where a BME280 should
        for label, bus, addresses in answering_buses(probe, devices, problems):
            for address in BME280_ADDRESSES:
                if address not in addresses:
                    continue
                entry: dict = {"bus": label, "address": f"{address:#04x}", "chip_id": None}
                candidates.append(entry)
                try:
                    chip_id = _read_chip_id(bus, address)
                except Exception as err:
                    entry["error"] = describe_error(err)
                    wrong.append(
                        f"a device acknowledges at {address:#04x} on {label}, but its chip id cannot be "
                        f"read: {describe_error(err)}"
                    )
                    continue
                entry.update(chip_id=f"{chip_id:#04x}", chip=_chip_name(chip_id))
                if chip_id != CHIP_ID_BME280:
                    wrong.append(_wrong_chip(chip_id, address))
                    continue
                driver = BME280Driver(bus, address)
                try:
                    result = driver.probe()
                finally:
                    driver.close()
                if not result.found:
                    wrong.append(result.detail)
                    continue
                entry["values"] = dict(result.info.get("values", {}))
                outcome["measured"] = {**entry, "devices": devices}
                probe.found["bme280"] = {"driver": "bme280", "bus": label, "address": address}
                outcome.update(passed=True, detail=f"{result.detail} (chip id {chip_id:#04x}, {label})")
                return
        outcome["measured"] = {"devices": devices, "candidates": candidates}
        if wrong:
            outcome["detail"] = "; ".join(wrong + problems)
        elif problems and not devices:
            outcome["detail"] = "no BME280: " + "; ".join(problems)
        else:
            where = ", ".join(devices) or "no bus"
            others = [a for addresses in devices.values() for a in addresses]
            extra = f" (the bus has {', '.join(others)})" if others else ""
            outcome["detail"] = (
                f"no BME280: nothing answers at 0x76 or 0x77 on {where}{extra}: check the wiring "
                "(SDA to GPIO2, SCL to GPIO3, 3V3, GND)"
            )
            if problems:
                outcome["detail"] += "; " + "; ".join(problems)


def _wrong_chip(chip_id: int, address: int) -> str:
    if chip_id in BMP280_CHIP_IDS:
        return f"BMP280 (chip id {chip_id:#04x}) at {address:#04x}: no humidity; a BME280 is needed"
    return (
        f"{_chip_name(chip_id)} (chip id {chip_id:#04x}) at {address:#04x}: not a BME280 "
        f"(chip id {CHIP_ID_BME280:#04x}); a BME280 is needed"
    )
