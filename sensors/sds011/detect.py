"""`edge-node detect` for the SDS011, on real ports or on a simulated node alike."""

from __future__ import annotations

from .driver import SDS011Driver


def detect(probe) -> None:
    """Each serial port is opened and the SDS011 woken, configured, asked for its firmware and
    listened to; it is identified by valid frames from it."""
    with probe.report.step("detect.sds011") as outcome:
        if not probe.serial:
            outcome["detail"] = (
                f"no SDS011: none of {', '.join(probe.default_serial_ports)} exists: enable the UART "
                "(sudo raspi-config nonint do_serial_hw 0) or plug in the USB adapter"
            )
            return
        tried = []
        for label, port in probe.serial:
            driver = SDS011Driver(port)
            try:
                result = driver.probe()
            finally:
                driver.close()
            if not result.found:
                tried.append({"port": port, "detail": result.detail})
                continue
            info = result.info
            detail = result.detail
            if info.get("firmware") is None:
                detail += "; it reports but does not answer commands: check its RX wire (to the Pi's TX)"
            outcome["measured"] = {
                "port": port,
                "device_id": info.get("device_id"),
                "firmware": info.get("firmware"),
                "values": dict(info.get("values", {})),
            }
            if tried:
                outcome["measured"]["tried"] = tried
            probe.found["sds011"] = {"driver": "sds011", "port": label}
            outcome.update(passed=True, detail=detail)
            return
        outcome["measured"] = {"tried": tried}
        outcome["detail"] = "no SDS011: " + "; ".join(t["detail"] for t in tried)
