"""The Pi health driver reads the host's vitals from a /sys + /proc tree: simulated, hand-written or real."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from pathlib import Path

import pytest

from drivers import Driver, SensorFault
from drivers.host import (
    CPU_TEMP_FILE,
    LOADAVG_FILE,
    MEMINFO_FILE,
    THROTTLED_FILE,
    TIMESYNC_FLAG_FILE,
    WIRELESS_FILE,
    PiHealthDriver,
    clock_synced,
    decode_throttled,
    host_vitals,
)
from simulators.host import SimHost

HOST_KEYS = {"cpu_temp_c", "load1", "mem_available_mb", "disk_free_mb", "clock_synced"}
CONDITIONS = ("under_voltage", "arm_freq_capped", "throttled", "soft_temp_limit")
THROTTLED_KEYS = (
    {"raw"} | {f"{name}_now" for name in CONDITIONS} | {f"{name}_since_boot" for name in CONDITIONS}
)

# One Pi's files, as its kernel writes them.
PI_FILES = {
    CPU_TEMP_FILE: "48312\n",
    LOADAVG_FILE: "0.52 0.58 0.59 1/389 12345\n",
    MEMINFO_FILE: "MemTotal:        3884192 kB\nMemFree:          512000 kB\nMemAvailable:    1953125 kB\n",
    THROTTLED_FILE: "50005\n",
    WIRELESS_FILE: (
        "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n"
        " face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n"
        " wlan0: 0000   56.  -54.  -256        0      0      0      0      0        0\n"
    ),
    TIMESYNC_FLAG_FILE: "",
}
PI_VALUES = {
    "cpu_temp_c": 48.3,
    "load1": 0.52,
    "mem_available_mb": 2000.0,
    "throttled": 0x50005,
    "wifi_dbm": -54.0,
}
VALUE_OF_FILE = {
    CPU_TEMP_FILE: "cpu_temp_c",
    LOADAVG_FILE: "load1",
    MEMINFO_FILE: "mem_available_mb",
    THROTTLED_FILE: "throttled",
    WIRELESS_FILE: "wifi_dbm",
}


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def as_strict_json(obj: object) -> object:
    return json.loads(json.dumps(obj, allow_nan=False))


@pytest.fixture
def sim(tmp_path: Path) -> SimHost:
    return SimHost(tmp_path / "host", seed=7)


# --- parsing, against known file contents ----------------------------------------------------------


def test_reads_each_value_from_the_kernels_files(tmp_path: Path) -> None:
    values = dict(PiHealthDriver(write_tree(tmp_path, PI_FILES)).read().values)
    disk_free_mb = values.pop("disk_free_mb")

    assert values == PI_VALUES  # 48312 m°C; 1953125 KiB = 2 * 10**9 bytes
    statvfs = os.statvfs(tmp_path)
    assert disk_free_mb == pytest.approx(statvfs.f_bavail * statvfs.f_frsize / 1e6, abs=50)


def test_every_value_has_a_unit(sim: SimHost) -> None:
    driver = PiHealthDriver(sim.root)

    assert isinstance(driver, Driver)
    assert set(driver.read().values) <= set(driver.units)
    assert driver.units["cpu_temp_c"] == "Cel"
    assert driver.units["disk_free_mb"] == "MB"


def test_decodes_the_throttled_example_of_the_raspberry_pi_documentation() -> None:
    # 0x50005: under-voltage and throttled now, and both have occurred since boot.
    assert decode_throttled(0x50005) == {
        "raw": 0x50005,
        "under_voltage_now": True,
        "arm_freq_capped_now": False,
        "throttled_now": True,
        "soft_temp_limit_now": False,
        "under_voltage_since_boot": True,
        "arm_freq_capped_since_boot": False,
        "throttled_since_boot": True,
        "soft_temp_limit_since_boot": False,
    }


@pytest.mark.parametrize("text", ["50005\n", "0x50005\n", "throttled=0x50005\n"])
def test_throttled_is_read_as_the_kernels_hex_or_as_vcgencmd_prints_it(tmp_path: Path, text: str) -> None:
    write_tree(tmp_path, {**PI_FILES, THROTTLED_FILE: text})

    assert host_vitals(tmp_path)["throttled"]["raw"] == 0x50005


def test_disk_free_is_measured_on_the_given_path(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "root", PI_FILES)
    driver = PiHealthDriver(root, disk_path="/")

    statvfs = os.statvfs("/")
    free_mb = statvfs.f_bavail * statvfs.f_frsize / 1e6
    assert driver.read().values["disk_free_mb"] == pytest.approx(free_mb, abs=50)
    assert host_vitals(root, "/")["disk_free_mb"] == pytest.approx(free_mb, abs=50)


# --- the heartbeat's host object ----------------------------------------------------------------------


def test_host_vitals_is_the_heartbeats_host_object(sim: SimHost) -> None:
    vitals = host_vitals(sim.root)

    assert set(vitals) == HOST_KEYS | {"throttled"}
    assert set(vitals["throttled"]) == THROTTLED_KEYS
    assert as_strict_json(vitals) == vitals
    for key in ("cpu_temp_c", "load1", "mem_available_mb", "disk_free_mb"):
        assert isinstance(vitals[key], float), key
    assert vitals["clock_synced"] is True


def test_host_vitals_omits_throttled_where_the_firmware_file_is_absent(tmp_path: Path) -> None:
    files = {name: content for name, content in PI_FILES.items() if name != THROTTLED_FILE}

    vitals = host_vitals(write_tree(tmp_path, files))

    assert set(vitals) == HOST_KEYS


def test_an_empty_root_gives_nones_from_host_vitals_and_a_fault_from_read(tmp_path: Path) -> None:
    vitals = host_vitals(tmp_path / "nothing-here")

    assert vitals == {
        "cpu_temp_c": None,
        "load1": None,
        "mem_available_mb": None,
        "disk_free_mb": None,
        "clock_synced": False,
    }
    with pytest.raises(SensorFault):
        PiHealthDriver(tmp_path).read()
    probe = PiHealthDriver(tmp_path).probe()
    assert probe.found is False and "loadavg" in probe.detail


# --- faults of the simulated host ---------------------------------------------------------------------


def test_simulated_host_reads_as_a_healthy_pi(sim: SimHost) -> None:
    for t in range(0, 3600, 60):
        sim.update(t)
        values = PiHealthDriver(sim.root).read().values
        assert 30 < values["cpu_temp_c"] < 70
        assert 0 <= values["load1"] < 5
        assert 0 < values["mem_available_mb"] < 3884192 * 1024 / 1e6
        assert -90 <= values["wifi_dbm"] <= -30
        assert values["throttled"] == 0


def test_cpu_temperature_follows_the_ambient(tmp_path: Path) -> None:
    cold = host_vitals(SimHost(tmp_path / "cold", ambient=lambda: -5.0).root)["cpu_temp_c"]
    hot = host_vitals(SimHost(tmp_path / "hot", ambient=lambda: 35.0).root)["cpu_temp_c"]

    assert hot - cold == pytest.approx(40, abs=2)


def test_under_voltage_sets_the_now_bit_and_the_since_boot_bit_stays(sim: SimHost) -> None:
    sim.faults.under_voltage = True
    sim.update(10)
    throttled = host_vitals(sim.root)["throttled"]
    assert throttled["raw"] == 0x10001
    assert throttled["under_voltage_now"] and throttled["under_voltage_since_boot"]

    sim.faults.under_voltage = False
    sim.update(20)
    throttled = host_vitals(sim.root)["throttled"]
    assert throttled["raw"] == 0x10000
    assert not throttled["under_voltage_now"] and throttled["under_voltage_since_boot"]


def test_overheat_shows_85_degrees_and_throttling(sim: SimHost) -> None:
    sim.faults.overheat = True
    sim.update(10)

    vitals = host_vitals(sim.root)
    assert vitals["cpu_temp_c"] == pytest.approx(85, abs=1.5)
    for condition in CONDITIONS[1:]:
        assert vitals["throttled"][f"{condition}_now"] and vitals["throttled"][f"{condition}_since_boot"]
    assert not vitals["throttled"]["under_voltage_now"]


def test_an_unsynced_clock_is_reported_until_timesync_flags_it_again(sim: SimHost) -> None:
    sim.faults.clock_unsynced = True
    sim.update(10)
    assert host_vitals(sim.root)["clock_synced"] is False
    assert clock_synced(sim.root) is False

    sim.faults.clock_unsynced = False
    sim.update(20)
    assert host_vitals(sim.root)["clock_synced"] is True


def test_a_missing_thermal_zone_gives_no_cpu_temperature(sim: SimHost) -> None:
    sim.faults.missing_thermal = True
    sim.update(10)

    assert host_vitals(sim.root)["cpu_temp_c"] is None
    assert "cpu_temp_c" not in PiHealthDriver(sim.root).read().values


# --- bad content ------------------------------------------------------------------------------------


GARBAGE = [
    "",
    "\n",
    "garbage\n",
    b"\xff\xfe\x00\x01",
    "nan nan nan\n",
    "-1\n",
    "inf\n",
    "MemAvailable: lots kB\n",
]


@pytest.mark.parametrize("garbage", GARBAGE)
@pytest.mark.parametrize("garbled_file", VALUE_OF_FILE)
def test_a_garbled_file_loses_only_its_own_value(tmp_path: Path, garbled_file: str, garbage: str) -> None:
    write_tree(tmp_path, {**PI_FILES, garbled_file: garbage})

    vitals = host_vitals(tmp_path)
    values = dict(PiHealthDriver(tmp_path).read().values)

    assert as_strict_json(vitals) == vitals
    lost = VALUE_OF_FILE[garbled_file]
    values.pop(lost, None)  # some "garbage" is a valid value: "-1" m°C
    del values["disk_free_mb"]
    assert values == {name: value for name, value in PI_VALUES.items() if name != lost}


def test_read_fails_only_when_neither_load_nor_memory_can_be_read(tmp_path: Path) -> None:
    write_tree(tmp_path, {**PI_FILES, LOADAVG_FILE: "garbage", MEMINFO_FILE: b"\xff"})

    with pytest.raises(SensorFault):
        PiHealthDriver(tmp_path).read()
    assert host_vitals(tmp_path)["cpu_temp_c"] == 48.3


def test_a_wifi_level_not_in_dbm_is_left_out(tmp_path: Path) -> None:
    relative_level = PI_FILES[WIRELESS_FILE].replace("-54.", " 70.")
    write_tree(tmp_path, {**PI_FILES, WIRELESS_FILE: relative_level})

    assert "wifi_dbm" not in PiHealthDriver(tmp_path).read().values


# --- the simulator's files --------------------------------------------------------------------------


def test_the_simulator_writes_the_kernels_formats(sim: SimHost) -> None:
    assert re.fullmatch(r"\d+\.\d\d \d+\.\d\d \d+\.\d\d \d+/\d+ \d+\n", (sim.root / LOADAVG_FILE).read_text())
    for line in (sim.root / MEMINFO_FILE).read_text().splitlines():
        assert re.fullmatch(r"[A-Za-z]+:\s+\d+ kB", line) and len(line) == 16 + 8 + 3, line
    assert re.fullmatch(r"[0-9a-f]+\n", (sim.root / THROTTLED_FILE).read_text())
    assert re.fullmatch(r"-?\d+\n", (sim.root / CPU_TEMP_FILE).read_text())


def test_the_simulator_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def tree_after_an_hour(name: str, seed: int) -> dict[str, str]:
        host = SimHost(tmp_path / name, seed=seed)
        for t in range(0, 3600, 60):
            host.update(t)
        return {str(p.relative_to(host.root)): p.read_text() for p in host.root.rglob("*") if p.is_file()}

    assert tree_after_an_hour("a", seed=1) == tree_after_an_hour("b", seed=1)
    assert tree_after_an_hour("c", seed=1) != tree_after_an_hour("d", seed=2)


def test_a_reader_never_sees_half_a_file(sim: SimHost) -> None:
    done = threading.Event()

    def keep_updating() -> None:
        t = 0
        while not done.is_set():
            t += 1
            sim.update(t)

    writer = threading.Thread(target=keep_updating)
    writer.start()
    try:
        for _ in range(300):
            assert len((sim.root / MEMINFO_FILE).read_text().splitlines()) == 12
            values = PiHealthDriver(sim.root).read().values
            assert values.keys() >= {"cpu_temp_c", "load1", "mem_available_mb"}
    finally:
        done.set()
        writer.join()
    assert not list(sim.root.rglob("*.tmp"))


# --- the real host ----------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="needs /proc")
def test_reads_this_machines_own_root() -> None:
    vitals = host_vitals("/")
    values = PiHealthDriver("/").read().values

    assert set(vitals) >= HOST_KEYS and as_strict_json(vitals) == vitals
    assert vitals["cpu_temp_c"] is None or -40 < vitals["cpu_temp_c"] < 150  # containers have no thermal zone
    assert vitals["load1"] >= 0
    assert vitals["mem_available_mb"] > 0 and vitals["disk_free_mb"] > 0
    assert isinstance(vitals["clock_synced"], bool)
    assert {"load1", "mem_available_mb", "disk_free_mb"} <= set(values)
