"""`edge-node detect` for the PMS5003, on real ports or on a simulated node alike."""

from __future__ import annotations

from .driver import PMS5003Driver

# A simulated node's ports are ptys answered at once; a real sensor gets the driver's patience.
SIM_WAITS = {"reply_timeout_s": 0.3, "frame_timeout_s": 0.6}


def detect(probe) -> None:
    """Each serial port no sensor was found on is opened, the PMS5003 woken, put in passive mode
    and asked for a frame; it is identified by valid 0x42 0x4D frames. It is an optional part:
    silence, or another device talking, on every port is "not fitted" (a pass); a port with
    PMS5003 frames that fail, a fault.

    Ports taken: a real port by its name in the found tables; a simulated node's ports are all
    "sim", laid out in registry order as detection runs, so the first as many as sensors were
    found on "sim" ports are theirs."""
    with probe.report.step("detect.pms5003") as outcome:
        taken = [table["port"] for table in probe.found.values() if "port" in table]
        simulated = [entry for entry in probe.serial if entry[0] == "sim"][taken.count("sim") :]
        ports = [entry for entry in probe.serial if entry[0] != "sim" and entry[0] not in taken] + simulated
        if not ports:
            outcome.update(passed=True, detail="no PMS5003 fitted: no serial port left to try")
            return
        tried = []
        for label, port in ports:
            driver = PMS5003Driver(port, **(SIM_WAITS if label == "sim" else {}))
            try:
                result = driver.probe()
            finally:
                driver.close()
            if not result.found:
                tried.append(
                    {"port": port, "detail": result.detail, "absent": result.info.get("absent", False)}
                )
                continue
            outcome["measured"] = {
                "port": port,
                "firmware": result.info.get("firmware"),
                "values": dict(result.info.get("values", {})),
            }
            if tried:
                outcome["measured"]["tried"] = [{"port": t["port"], "detail": t["detail"]} for t in tried]
            probe.found["pms5003"] = {"driver": "pms5003", "port": label}
            outcome.update(passed=True, detail=result.detail)
            return
        outcome["measured"] = {"tried": [{"port": t["port"], "detail": t["detail"]} for t in tried]}
        absent = all(t["absent"] for t in tried)
        outcome["passed"] = absent
        outcome["detail"] = ("no PMS5003 fitted: " if absent else "no working PMS5003: ") + "; ".join(
            t["detail"] for t in tried
        )
