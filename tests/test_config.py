"""The configuration contract (DESIGN §5): what loads, what it means, and every error in one line."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

import pytest

from edge_node.config import (
    DRIVERS,
    SECTIONS,
    Config,
    ConfigError,
    load_config,
    parse_config,
    parse_size,
)
from sensors import COMPONENTS, components

MINIMAL = """\
[node]
id = "trs-0001"

[broker]
url = "mqtt://broker.example"
"""

DESIGN_EXAMPLE = """\
[node]
id = "trs-0042"
site = "Rambla d'Ègara 12"          # free text for technicians
location = { lat = 41.5630, lon = 2.0089 }

[broker]
url = "mqtts://broker.terrassa.example:8883"   # mqtt:// or mqtts://
username = "trs-0042"
password_file = "SECRET"        # or client_cert/client_key
ca_file = "CA"
topic_prefix = "city/terrassa/nodes"
keepalive_s = 30

[buffer]
path = "/var/lib/edge-node/buffer.db"
max_rows = 2_000_000
max_bytes = "512MB"
sync_interval_s = 10       # power-cut window; kill -9 loses nothing committed

[forward]
max_inflight = 20          # messages awaiting PUBACK
batch_max = 100            # readings per message while catching up
backfill_rate = 500        # readings/s while catching up; 0 = no cap (what the drain benchmark measures)

[health]
heartbeat_s = 60

[sensors.bme280]
driver = "bme280"
bus = "i2c:1"              # or "sim"
address = 0x76
interval_s = 10

[sensors.sds011]
driver = "sds011"
port = "/dev/serial0"      # or "sim"
interval_s = 60
duty = { on_s = 30, off_s = 270 }   # spare the laser: warm up, read, sleep
                                    # without `duty`: runs continuously, read every interval_s

[sensors.rain]
driver = "rain_gauge"
pin = 6
pin_factory = "lgpio"      # or "sim": gpiozero's MockFactory, driven by the simulator
mm_per_tip = 0.2794
interval_s = 60

[sensors.wind]
driver = "anemometer"
pin = 5
pin_factory = "lgpio"      # or "sim"
ms_per_hz = 0.667
interval_s = 10

[sensors.host]
driver = "pi_health"
root = "/"                 # or "sim": a generated /sys and /proc tree
interval_s = 60
"""


def parse(text: str, **kwargs) -> Config:
    return parse_config(text, source="config.toml", **kwargs)


def sample_text() -> str:
    return resources.files("edge_node").joinpath("config.sample.toml").read_text(encoding="utf-8")


# --- What loads ---------------------------------------------------------------------------------


def test_the_shipped_sample_loads():
    with resources.as_file(resources.files("edge_node").joinpath("config.sample.toml")) as path:
        config = load_config(path)
    assert config.node.id == "trs-0042"
    assert list(config.sensors) == [component.name for component in components().values()]
    assert {sensor.driver for sensor in config.sensors.values()} == set(DRIVERS)


def test_the_shipped_sample_shows_every_key_with_its_default():
    text = sample_text()
    for section, keys in SECTIONS.items():
        assert f"[{section}]" in text
        for key in keys:
            assert re.search(rf"^(# )?{key} = ", text, re.MULTILINE), f"{section}.{key} is not in the sample"
    for driver, schema in DRIVERS.items():
        assert f'driver = "{driver}"' in text
        for key in schema.options:
            assert re.search(rf"^{key} = ", text, re.MULTILINE), f"{driver} option {key} is not in the sample"
    sample, defaults = parse(sample_text()), parse(MINIMAL)
    for section in ("buffer", "forward", "health", "simulation"):
        assert getattr(sample, section) == getattr(defaults, section)
    assert sample.broker.topic_prefix == defaults.broker.topic_prefix
    assert sample.broker.keepalive_s == defaults.broker.keepalive_s


def test_the_design_example_loads(tmp_path):
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    text = DESIGN_EXAMPLE.replace('"SECRET"', '"secret"').replace('"CA"', '"ca.pem"')
    (tmp_path / "config.toml").write_text(text)

    config = load_config(tmp_path / "config.toml")

    assert config.node.site == "Rambla d'Ègara 12"
    assert (config.node.lat, config.node.lon) == (41.5630, 2.0089)
    assert config.topic_root == "city/terrassa/nodes/trs-0042"
    broker = config.broker
    assert (broker.host, broker.port, broker.tls) == ("broker.terrassa.example", 8883, True)
    assert broker.username == "trs-0042"
    assert broker.password_file == tmp_path / "secret"
    assert broker.password() == "s3cret"
    assert broker.ca_file == tmp_path / "ca.pem"
    assert config.buffer.max_bytes == 512_000_000
    sds011 = config.sensors["sds011"]
    assert sds011.interval_s == 60
    assert sds011.options == {"port": "/dev/serial0", "duty": {"on_s": 30, "off_s": 270}}
    assert config.sensors["bme280"].options == {"bus": "i2c:1", "address": 0x76}
    assert config.sensors["rain"].options == {"pin": 6, "pin_factory": "lgpio", "mm_per_tip": 0.2794}
    assert config.sensors["wind"].options == {"pin": 5, "pin_factory": "lgpio", "ms_per_hz": 0.667}
    assert config.sensors["host"].options == {"root": "/"}


def test_a_minimal_config_gets_every_default():
    config = parse(MINIMAL)
    assert config.node.site == "" and config.node.lat is None and config.node.lon is None
    broker = config.broker
    assert (broker.host, broker.port, broker.tls) == ("broker.example", 1883, False)
    assert broker.username is broker.password_file is broker.client_cert is broker.ca_file is None
    assert broker.password() is None
    assert (broker.topic_prefix, broker.keepalive_s) == ("city/terrassa/nodes", 30)
    assert config.buffer.path == Path("/var/lib/edge-node/buffer.db")
    assert (config.buffer.max_rows, config.buffer.max_bytes) == (2_000_000, 512_000_000)
    assert config.buffer.sync_interval_s == 10
    assert (config.forward.max_inflight, config.forward.batch_max, config.forward.backfill_rate) == (
        20,
        100,
        500,
    )
    assert config.health.heartbeat_s == 60
    assert config.simulation.seed == 42
    assert config.sensors == {}


def test_each_driver_fills_its_defaults():
    config = parse(
        MINIMAL
        + """
[sensors.b]
driver = "bme280"
[sensors.s]
driver = "sds011"
[sensors.r]
driver = "rain_gauge"
pin = 6
[sensors.w]
driver = "anemometer"
pin = 5
[sensors.h]
driver = "pi_health"
"""
    )
    sensors = config.sensors
    assert [(s.name, s.driver, s.interval_s) for s in sensors.values()] == [
        ("b", "bme280", 10),
        ("s", "sds011", 60),
        ("r", "rain_gauge", 60),
        ("w", "anemometer", 10),
        ("h", "pi_health", 60),
    ]
    assert sensors["b"].options == {"bus": "i2c:1", "address": 0x76}
    assert sensors["s"].options == {"port": "/dev/serial0", "duty": None}
    assert sensors["r"].options == {"pin": 6, "pin_factory": "lgpio", "mm_per_tip": 0.2794}
    assert sensors["w"].options == {"pin": 5, "pin_factory": "lgpio", "ms_per_hz": 0.667}
    assert sensors["h"].options == {"root": "/"}


def test_simulated_buses_and_the_mock_alias():
    config = parse(
        MINIMAL
        + """
[sensors.bme280]
driver = "bme280"
bus = "sim"
[sensors.rain]
driver = "rain_gauge"
pin = 6
pin_factory = "mock"
[sensors.sds011]
driver = "sds011"
port = "sim"
[sensors.host]
driver = "pi_health"
root = "sim"
"""
    )
    assert config.sensors["rain"].options["pin_factory"] == "sim"
    assert config.sensors["sds011"].options["port"] == "sim"


def test_integers_are_accepted_where_numbers_are_expected():
    config = parse(MINIMAL + "[buffer]\nsync_interval_s = 0.5\n[forward]\nbackfill_rate = 0\n")
    assert config.buffer.sync_interval_s == 0.5
    assert config.forward.backfill_rate == 0.0 and isinstance(config.forward.backfill_rate, float)


def test_the_broker_port_defaults_by_scheme_and_can_be_given():
    assert parse(MINIMAL.replace("mqtt://broker.example", "mqtts://broker.example")).broker.port == 8883
    assert parse(MINIMAL.replace("broker.example", "broker.example:1884")).broker.port == 1884
    assert parse(MINIMAL.replace("broker.example", "[::1]:1884")).broker.host == "::1"


def test_config_hash_is_the_first_16_hex_digits_of_the_files_sha256(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(MINIMAL)
    config = load_config(path)
    assert re.fullmatch(r"[0-9a-f]{16}", config.config_hash)
    assert config.config_hash == parse(MINIMAL).config_hash
    assert config.config_hash != parse(MINIMAL + "\n").config_hash


def test_config_is_immutable():
    config = parse(MINIMAL + '[sensors.b]\ndriver = "bme280"\n')
    with pytest.raises(AttributeError):
        config.node.id = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.sensors["b"].interval_s = 1  # type: ignore[misc]


# --- Paths --------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "secret").write_text("pw\r\n")
    (tmp_path / "etc" / "client.pem").write_text("cert")
    (tmp_path / "etc" / "client.key").write_text("key")
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "etc" / "config.toml").write_text(
        """\
[node]
id = "n1"
[broker]
url = "mqtts://h"
username = "n1"
password_file = "secret"
client_cert = "client.pem"
client_key = "./client.key"
ca_file = "../ca.pem"
[buffer]
path = "state/buffer.db"
"""
    )
    monkeypatch.chdir(tmp_path)

    config = load_config("etc/config.toml")

    etc = tmp_path / "etc"
    assert config.source == "etc/config.toml"
    assert config.broker.password_file == etc / "secret"
    assert config.broker.client_cert == etc / "client.pem"
    assert config.broker.client_key == etc / "client.key"
    assert config.broker.ca_file == etc / ".." / "ca.pem"
    assert config.buffer.path == etc / "state" / "buffer.db"
    assert config.broker.password() == "pw"


def test_parse_config_resolves_against_base_dir_or_the_working_directory(tmp_path, monkeypatch):
    text = MINIMAL + '[buffer]\npath = "buffer.db"\n'
    assert parse(text, base_dir=tmp_path).buffer.path == tmp_path / "buffer.db"
    monkeypatch.chdir(tmp_path)
    assert parse(text).buffer.path == tmp_path / "buffer.db"


def test_password_strips_only_one_trailing_newline(tmp_path):
    (tmp_path / "secret").write_text("pw \n\n")
    config = parse(
        MINIMAL + 'username = "u"\npassword_file = "secret"\nallow_insecure = true\n', base_dir=tmp_path
    )
    assert config.broker.password() == "pw \n"


# --- Sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MB", 512_000_000),
        ("64MiB", 64 * 2**20),
        ("1GB", 10**9),
        ("1.5GiB", 3 * 2**29),
        ("100kB", 100_000),
        ("100KB", 100_000),
        ("2KiB", 2048),
        ("1TB", 10**12),
        ("512 MB", 512_000_000),
        ("1000000", 1_000_000),
        ("1000000B", 1_000_000),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "-1MB", "1.MB", "512 megs", "512mb", "1e6", "0x10MB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_max_bytes_takes_an_integer_byte_count():
    assert parse(MINIMAL + "[buffer]\nmax_bytes = 1_000_000\n").buffer.max_bytes == 1_000_000


# --- Every error: one line naming the file, the dotted key and the problem ----------------------

BAD_CONFIGS = {
    "empty file": ("", "node.id: required"),
    "no broker": ('[node]\nid = "n1"\n', "broker.url: required"),
    "bad node id": (
        MINIMAL.replace("trs-0001", "TRS_1"),
        'node.id: must match ^[a-z0-9][a-z0-9-]{0,31}$ (got "TRS_1")',
    ),
    "node id too long": (
        MINIMAL.replace("trs-0001", "a" * 33),
        f'node.id: must match ^[a-z0-9][a-z0-9-]{{0,31}}$ (got "{"a" * 33}")',
    ),
    "node id not a string": (MINIMAL.replace('"trs-0001"', "42"), "node.id: must be a string (got 42)"),
    "unknown section": (MINIMAL + "[sensor.x]\n", "sensor: unknown key (did you mean sensors?)"),
    "unknown key": (
        MINIMAL + 'usrname = "u"\n',
        "broker.usrname: unknown key (did you mean broker.username?)",
    ),
    "unknown key without a close match": (MINIMAL + "[health]\nfoo = 1\n", "health.foo: unknown key"),
    "section not a table": ('node = "n1"\n', 'node: must be a table (got "n1")'),
    "latitude out of range": (
        MINIMAL.replace('"trs-0001"', '"n1"\nlocation = { lat = 91, lon = 2 }'),
        "node.location.lat: must be <= 90 (got 91)",
    ),
    "longitude missing": (
        MINIMAL.replace('"trs-0001"', '"n1"\nlocation = { lat = 41.5 }'),
        "node.location.lon: required",
    ),
    "http url": (
        MINIMAL.replace("mqtt://", "http://"),
        'broker.url: must start with mqtt:// or mqtts:// (got "http://broker.example")',
    ),
    "url without host": (MINIMAL.replace("broker.example", ""), 'broker.url: needs a host (got "mqtt://")'),
    "url with a path": (
        MINIMAL.replace("broker.example", "broker.example/x"),
        'broker.url: must not have a path, query or fragment (got "mqtt://broker.example/x")',
    ),
    "url with a bad port": (
        MINIMAL.replace("broker.example", "broker.example:99999"),
        "broker.url: not a valid URL: Port out of range 0-65535",
    ),
    "url with credentials, never echoed": (
        MINIMAL.replace("mqtt://", "http://user:hunter2@"),
        "broker.url: must not contain credentials; use broker.username and broker.password_file",
    ),
    "password over mqtt://": (
        MINIMAL + 'username = "u"\npassword_file = "secret"\n',
        "broker.password_file: a password over mqtt:// travels in clear: use an mqtts:// broker, or "
        "set broker.allow_insecure = true on a network you trust",
    ),
    "credentials in a query": (
        MINIMAL.replace("broker.example", "broker.example/?password=hunter2"),
        'broker.url: must not have a path, query or fragment (got "mqtt://broker.example/"...)',
    ),
    "allow_insecure not a bool": (
        MINIMAL + 'allow_insecure = "yes"\n',
        'broker.allow_insecure: must be true or false (got "yes")',
    ),
    "password_file without username": (
        MINIMAL + 'password_file = "secret"\n',
        "broker.password_file: needs broker.username",
    ),
    "client_cert without client_key": (
        MINIMAL.replace("mqtt://", "mqtts://") + 'client_cert = "c.pem"\n',
        "broker.client_cert: needs broker.client_key (a client certificate and its key go together)",
    ),
    "client_key without client_cert": (
        MINIMAL.replace("mqtt://", "mqtts://") + 'client_key = "c.key"\n',
        "broker.client_key: needs broker.client_cert (a client certificate and its key go together)",
    ),
    "ca_file without TLS": (
        MINIMAL + 'ca_file = "ca.pem"\n',
        "broker.ca_file: needs TLS: use an mqtts:// broker.url",
    ),
    "empty username": (MINIMAL + 'username = ""\n', "broker.username: must not be empty"),
    "topic_prefix with a wildcard": (
        MINIMAL + 'topic_prefix = "city/+/nodes"\n',
        "broker.topic_prefix: must not contain the MQTT wildcards '+' or '#' (got \"city/+/nodes\")",
    ),
    "topic_prefix with a trailing slash": (
        MINIMAL + 'topic_prefix = "city/"\n',
        "broker.topic_prefix: must not start or end with '/' (got \"city/\")",
    ),
    "keepalive too short": (MINIMAL + "keepalive_s = 2\n", "broker.keepalive_s: must be >= 5 (got 2)"),
    "keepalive a float": (
        MINIMAL + "keepalive_s = 30.0\n",
        "broker.keepalive_s: must be an integer (got 30.0)",
    ),
    "integer as a string": (
        MINIMAL + '[forward]\nmax_inflight = "20"\n',
        'forward.max_inflight: must be an integer (got "20")',
    ),
    "boolean is not a number": (
        MINIMAL + "[forward]\nbackfill_rate = true\n",
        "forward.backfill_rate: must be a number (got true)",
    ),
    "a date is not an integer": (
        MINIMAL + "keepalive_s = 1979-05-27T07:32:00Z\n",
        "broker.keepalive_s: must be an integer (got 1979-05-27T07:32:00+00:00)",
    ),
    "nan is not a number": (
        MINIMAL + "[health]\nheartbeat_s = nan\n",
        "health.heartbeat_s: must be a finite number (got nan)",
    ),
    "max_inflight too high": (
        MINIMAL + "[forward]\nmax_inflight = 1001\n",
        "forward.max_inflight: must be <= 1000 (got 1001)",
    ),
    "batch_max zero": (MINIMAL + "[forward]\nbatch_max = 0\n", "forward.batch_max: must be >= 1 (got 0)"),
    "negative backfill_rate": (
        MINIMAL + "[forward]\nbackfill_rate = -1\n",
        "forward.backfill_rate: must be >= 0 (got -1)",
    ),
    "max_rows too small": (MINIMAL + "[buffer]\nmax_rows = 99\n", "buffer.max_rows: must be >= 100 (got 99)"),
    "max_bytes too small": (
        MINIMAL + '[buffer]\nmax_bytes = "100kB"\n',
        'buffer.max_bytes: must be >= 1MB (got "100kB")',
    ),
    "max_bytes not a size": (
        MINIMAL + '[buffer]\nmax_bytes = "512 megs"\n',
        'buffer.max_bytes: must be a size like "512MB" or "64MiB" (got "512 megs")',
    ),
    "max_bytes a float": (
        MINIMAL + "[buffer]\nmax_bytes = 5e8\n",
        'buffer.max_bytes: must be a byte count or a size like "512MB" (got 500000000.0)',
    ),
    "sync_interval_s zero": (
        MINIMAL + "[buffer]\nsync_interval_s = 0\n",
        "buffer.sync_interval_s: must be > 0 (got 0)",
    ),
    "sync_interval_s too long": (
        MINIMAL + "[buffer]\nsync_interval_s = 3600.5\n",
        "buffer.sync_interval_s: must be <= 3600 (got 3600.5)",
    ),
    "empty buffer path": (MINIMAL + '[buffer]\npath = ""\n', "buffer.path: must not be empty"),
    "heartbeat too short": (
        MINIMAL + "[health]\nheartbeat_s = 0.5\n",
        "health.heartbeat_s: must be >= 1 (got 0.5)",
    ),
    "negative seed": (MINIMAL + "[simulation]\nseed = -1\n", "simulation.seed: must be >= 0 (got -1)"),
    "sensor interval too short (DESIGN's example)": (
        MINIMAL + '[sensors.sds011]\ndriver = "sds011"\ninterval_s = 0\n',
        "sensors.sds011.interval_s: must be >= 1 (got 0)",
    ),
    "sensor without driver": (MINIMAL + "[sensors.x]\ninterval_s = 10\n", "sensors.x.driver: required"),
    "unknown driver": (
        MINIMAL + '[sensors.x]\ndriver = "foo"\n',
        f'sensors.x.driver: unknown driver "foo" (known: {", ".join(sorted(COMPONENTS))})',
    ),
    "bad sensor name": (
        MINIMAL + '[sensors.Rain]\ndriver = "rain_gauge"\npin = 6\n',
        "sensors.Rain: sensor names must match ^[a-z0-9][a-z0-9_-]{0,31}$ (they become MQTT topic levels)",
    ),
    "sensor name with a slash": (
        MINIMAL + '[sensors."a/b"]\ndriver = "pi_health"\n',
        'sensors."a/b": sensor names must match ^[a-z0-9][a-z0-9_-]{0,31}$ (they become MQTT topic levels)',
    ),
    "sensor not a table": (MINIMAL + "[sensors]\nx = 1\n", "sensors.x: must be a table (got 1)"),
    "option of another driver": (
        MINIMAL + '[sensors.x]\ndriver = "bme280"\nport = "/dev/ttyS0"\n',
        "sensors.x.port: unknown key",
    ),
    "misspelt option": (
        MINIMAL + '[sensors.x]\ndriver = "bme280"\nadress = 0x77\n',
        "sensors.x.adress: unknown key (did you mean sensors.x.address?)",
    ),
    "bme280 bus": (
        MINIMAL + '[sensors.x]\ndriver = "bme280"\nbus = "i2c1"\n',
        'sensors.x.bus: must be "sim" or "i2c:N" (got "i2c1")',
    ),
    "bme280 address": (
        MINIMAL + '[sensors.x]\ndriver = "bme280"\naddress = 0x50\n',
        "sensors.x.address: must be 0x76 or 0x77 (got 0x50)",
    ),
    "sds011 port": (
        MINIMAL + '[sensors.x]\ndriver = "sds011"\nport = "ttyUSB0"\n',
        'sensors.x.port: must be "sim", a device path or a pyserial URL (got "ttyUSB0")',
    ),
    "sds011 duty warm-up too short": (
        MINIMAL + '[sensors.x]\ndriver = "sds011"\nduty = { on_s = 5, off_s = 60 }\n',
        "sensors.x.duty.on_s: must be >= 10 (got 5)",
    ),
    "sds011 duty unknown key": (
        MINIMAL + '[sensors.x]\ndriver = "sds011"\nduty = { on_s = 30, of_s = 60 }\n',
        "sensors.x.duty.of_s: unknown key (did you mean sensors.x.duty.off_s?)",
    ),
    "rain gauge without pin": (
        MINIMAL + '[sensors.rain]\ndriver = "rain_gauge"\n',
        "sensors.rain.pin: required",
    ),
    "rain gauge pin out of range": (
        MINIMAL + '[sensors.rain]\ndriver = "rain_gauge"\npin = 28\n',
        "sensors.rain.pin: must be <= 27 (got 28)",
    ),
    "pin_factory": (
        MINIMAL + '[sensors.wind]\ndriver = "anemometer"\npin = 5\npin_factory = "rpigpio"\n',
        'sensors.wind.pin_factory: must be "lgpio" or "sim" (got "rpigpio")',
    ),
    "mm_per_tip zero": (
        MINIMAL + '[sensors.rain]\ndriver = "rain_gauge"\npin = 6\nmm_per_tip = 0\n',
        "sensors.rain.mm_per_tip: must be > 0 (got 0)",
    ),
    "two sensors on one pin": (
        MINIMAL
        + '[sensors.rain]\ndriver = "rain_gauge"\npin = 6\n[sensors.wind]\ndriver = "anemometer"\npin = 6\n',
        "sensors.wind.pin: GPIO6 is already used by sensors.rain",
    ),
    "two BME280s at one address": (
        MINIMAL + '[sensors.a]\ndriver = "bme280"\n[sensors.b]\ndriver = "bme280"\n',
        "sensors.b.address: I2C address 0x76 on i2c:1 is already used by sensors.a",
    ),
    "pi_health root": (
        MINIMAL + '[sensors.host]\ndriver = "pi_health"\nroot = "fake"\n',
        'sensors.host.root: must be "sim" or an absolute path (got "fake")',
    ),
    "the first error in file order is reported": (
        '[forward]\nbatch_max = 0\n[node]\nid = "BAD"\n',
        "forward.batch_max: must be >= 1 (got 0)",
    ),
    "a key with a newline stays on one line": (MINIMAL + '"a\\nb" = 1\n', 'broker."a\\nb": unknown key'),
}


@pytest.mark.parametrize(("text", "message"), list(BAD_CONFIGS.values()), ids=list(BAD_CONFIGS))
def test_a_bad_config_is_one_line_naming_file_key_and_problem(text, message):
    with pytest.raises(ConfigError) as raised:
        parse(text)
    assert str(raised.value) == f"config.toml: {message}"
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[node]\nid = "n1\n', "(at line 2, column 9)"),
        (MINIMAL + '[node]\nid = "n2"\n', "(at line 6, column 6)"),
    ],
    ids=["unterminated string", "duplicate table"],
)
def test_invalid_toml_is_reported_on_one_line_with_tomllibs_message(text, where):
    # tomllib's wording may change between Python versions; its position is stable.
    with pytest.raises(ConfigError) as raised:
        parse(text)
    assert str(raised.value).startswith("config.toml: invalid TOML: ")
    assert str(raised.value).endswith(where)
    assert "\n" not in str(raised.value)


def test_error_carries_its_parts_and_is_a_value_error():
    with pytest.raises(ValueError) as raised:
        parse(MINIMAL + "keepalive_s = 2\n")
    error = raised.value
    assert isinstance(error, ConfigError)
    assert (error.source, error.key, error.problem) == (
        "config.toml",
        "broker.keepalive_s",
        "must be >= 5 (got 2)",
    )


def test_the_file_is_named_as_the_user_gave_it(tmp_path, monkeypatch):
    (tmp_path / "config.toml").write_text("[node]\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path))}/config.toml: node.id: required$"):
        load_config(tmp_path / "config.toml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^config.toml: node.id: required$"):
        load_config("config.toml")


def test_an_unreadable_config_file(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "missing.toml")
    assert str(raised.value) == f"{tmp_path}/missing.toml: cannot read: No such file or directory"
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    assert str(raised.value) == f"{tmp_path}: cannot read: Is a directory"


def test_a_config_file_that_is_not_utf8(tmp_path):
    (tmp_path / "config.toml").write_bytes(b'[node]\nid = "\xff"\n')
    with pytest.raises(
        ConfigError, match=r"config.toml: invalid TOML: not UTF-8 \(invalid start byte at byte 13\)$"
    ):
        load_config(tmp_path / "config.toml")


@pytest.mark.parametrize("key", ["password_file", "ca_file", "client_cert", "client_key"])
def test_broker_files_must_exist_at_load(tmp_path, key):
    for name in ("secret", "ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    files = {
        "password_file": "secret",
        "ca_file": "ca.pem",
        "client_cert": "client.pem",
        "client_key": "client.key",
    }
    files[key] = "/etc/edge-node/nonexistent"
    lines = "".join(f'{name} = "{path}"\n' for name, path in files.items())
    text = MINIMAL.replace("mqtt://", "mqtts://") + 'username = "u"\n' + lines
    with pytest.raises(ConfigError) as raised:
        parse(text, base_dir=tmp_path)
    assert (
        str(raised.value)
        == f"config.toml: broker.{key}: cannot read /etc/edge-node/nonexistent: No such file or directory"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_broker_file_is_reported(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("pw")
    secret.chmod(0)
    with pytest.raises(ConfigError) as raised:
        parse(MINIMAL + 'username = "u"\npassword_file = "secret"\n', base_dir=tmp_path)
    assert str(raised.value) == f"config.toml: broker.password_file: cannot read {secret}: Permission denied"


def test_calibration_is_per_value_with_defaults(tmp_path):
    text = (
        MINIMAL + '[sensors.b]\ndriver = "bme280"\nbus = "sim"\n'
        "calibration = { temperature = { offset = -0.4 }, humidity = { slope = 1.03 } }\n"
    )
    sensor = parse_config(text).sensors["b"]
    assert sensor.calibration == {
        "temperature": {"offset": -0.4, "slope": 1.0},
        "humidity": {"offset": 0.0, "slope": 1.03},
    }
    assert "calibration" not in sensor.options


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        ("{ temperature = { ofset = 1 } }", "sensors.b.calibration.temperature.ofset: unknown key"),
        ("{ temperature = { slope = 0 } }", "sensors.b.calibration.temperature.slope: must be > 0 (got 0)"),
        ("3", "sensors.b.calibration: must be a table of value names (got 3)"),
    ],
)
def test_bad_calibration_names_the_key(calibration, message):
    text = MINIMAL + f'[sensors.b]\ndriver = "bme280"\nbus = "sim"\ncalibration = {calibration}\n'
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="config.toml")
    assert str(err.value).startswith(f"config.toml: {message}")
