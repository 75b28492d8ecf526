"""The node's configuration: one TOML file, loaded and validated once at start-up (DESIGN §5).

Every problem is a `ConfigError` whose message is one line naming the file, the dotted key and
the problem, e.g. ``config.toml: sensors.sds011.interval_s: must be >= 1 (got 0)``.

The schema is declarative, in the manner of ESPHome's ``CONFIG_SCHEMA``: each section, and each
driver's options, is a table of `Key`s; a key is a check (which validates one TOML value and
converts it) and a default. A default is written as it would be in the file and goes through the
same check, so a missing section is validated as an empty table and reports its own missing
required keys. Unknown keys are errors. To support a new driver, add one entry to `DRIVERS`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .broker_url import BrokerAddress, parse_broker_url, refuse_clear_password

__all__ = [
    "DRIVERS",
    "BrokerConfig",
    "BufferConfig",
    "Config",
    "ConfigError",
    "DriverSchema",
    "SECTIONS",
    "ForwardConfig",
    "RemoteConfig",
    "HealthConfig",
    "NodeConfig",
    "SensorConfig",
    "SimulationConfig",
    "load_config",
    "load_layered",
    "parse_broker_url",
    "parse_config",
    "parse_size",
]


class ConfigError(ValueError):
    """A configuration that cannot be used; ``str(err)`` is ``<file>: <dotted.key>: <problem>``.

    `key` is None for problems with the file as a whole (unreadable, invalid TOML).
    """

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(" ".join(f"{where}: {problem}".splitlines()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.key, self.problem))


# --- The configuration, as the rest of edge-node sees it -------------------------------------


@dataclass(frozen=True)
class NodeConfig:
    id: str
    site: str
    lat: float | None
    lon: float | None


@dataclass(frozen=True)
class BrokerConfig:
    url: str
    host: str
    port: int
    tls: bool
    username: str | None
    password_file: Path | None
    client_cert: Path | None
    client_key: Path | None
    ca_file: Path | None
    topic_prefix: str
    keepalive_s: int

    def password(self) -> str | None:
        """The password from `password_file` without its trailing newline; None without a file.

        Read when needed, so the secret is not kept in memory; raises OSError if the file has gone.
        """
        if self.password_file is None:
            return None
        secret = self.password_file.read_text(encoding="utf-8")
        return secret.removesuffix("\n").removesuffix("\r")


@dataclass(frozen=True)
class BufferConfig:
    path: Path
    max_rows: int
    max_bytes: int
    sync_interval_s: float


@dataclass(frozen=True)
class ForwardConfig:
    max_inflight: int
    batch_max: int
    backfill_rate: float  # readings/s while catching up; 0 = no cap
    reconnect_max_s: float  # cap of the full-jitter reconnect delay


@dataclass(frozen=True)
class HealthConfig:
    heartbeat_s: float


@dataclass(frozen=True)
class SensorConfig:
    name: str
    driver: str
    interval_s: float
    options: Mapping[str, Any]  # the driver's validated options, defaults filled in
    calibration: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class SimulationConfig:
    seed: int
    # Scheduled faults for simulated sensors: {"sensor", "fault", "at_s", "for_s" (None: for good)}.
    faults: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class RemoteConfig:
    trusted_keys: tuple[str, ...]  # "ed25519:BASE64" public keys whose signed commands the node runs
    confirm_s: float  # a remote change must prove healthy this soon, else it is rolled back


@dataclass(frozen=True)
class Config:
    """The whole configuration. Its mappings are plain dicts (so `dataclasses.asdict` and
    `copy.deepcopy` work); treat them as read-only."""

    source: str  # the config file's path as given, or parse_config's `source`
    node: NodeConfig
    broker: BrokerConfig
    buffer: BufferConfig
    forward: ForwardConfig
    health: HealthConfig
    sensors: Mapping[str, SensorConfig]  # in file order
    simulation: SimulationConfig
    config_hash: str  # first 16 hex digits of the SHA-256 of the file's bytes (and the remote layer's)
    remote: RemoteConfig = RemoteConfig((), 120.0)

    @property
    def topic_root(self) -> str:
        return f"{self.broker.topic_prefix}/{self.node.id}"


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at `path`; raise `ConfigError` on any problem."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = file.read()
    except OSError as err:
        raise ConfigError(source, None, f"cannot read: {err.strerror or err}") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            source, None, f"invalid TOML: not UTF-8 ({err.reason} at byte {err.start})"
        ) from err
    return _parse(text, data, source, Path(os.path.abspath(source)).parent)


def parse_config(text: str, *, source: str = "<string>", base_dir: Path | None = None) -> Config:
    """Validate config text as `load_config` does; relative paths resolve against `base_dir` (or cwd)."""
    base = Path(os.path.abspath(base_dir if base_dir is not None else os.getcwd()))
    return _parse(text, text.encode("utf-8"), source, base)


def parse_size(text: str) -> int:
    """Bytes in a size such as "512MB", "64MiB", "1.5GiB" or "100kB" (SI and IEC units)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or match["unit"] not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r}")
    whole, _, fraction = match["number"].partition(".")  # exact, in integers: "1.5GiB" is 1.5 * 2**30
    unit = _SIZE_UNITS[match["unit"]]
    return int(whole) * unit + (int(fraction) * unit // 10 ** len(fraction) if fraction else 0)


_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?) ?(?P<unit>[A-Za-z]*)")
_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "kB": 10**3,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


# --- Schema machinery --------------------------------------------------------------------------


class _Invalid(Exception):
    """One value failed its check. Each table it passes through on the way up prepends its key."""

    def __init__(self, problem: str, *path: str, did_you_mean: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = list(path)
        self.did_you_mean = did_you_mean  # a sibling key, for "unknown key"


Check = Callable[[Any], Any]
REQUIRED: Any = object()


@dataclass(frozen=True)
class Key:
    """One key of a table: `check` validates and converts the value. `default` is REQUIRED,
    None (optional, no value) or a value written as in the file, which `check` also converts."""

    check: Check
    default: Any = REQUIRED


def _show(value: Any) -> str:
    """A value as the user would recognise it from the file, JSON-like, on one line."""
    if isinstance(value, float) and not math.isfinite(value):
        shown = repr(value)  # nan, inf, -inf: as TOML writes them
    elif isinstance(value, datetime.date | datetime.time):
        shown = value.isoformat()  # unquoted, as TOML writes it
    else:
        shown = json.dumps(value, ensure_ascii=False, default=str)  # default: dates inside arrays or tables
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _either(options: list[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def _check_at(name: str, check: Check, value: Any) -> Any:
    try:
        return check(value)
    except _Invalid as err:
        err.path.insert(0, name)
        raise


def _validate_table(value: Any, schema: Mapping[str, Key]) -> dict[str, Any]:
    """Check a table's keys in file order, then fill defaults; the result is in schema order."""
    if not isinstance(value, dict):
        raise _Invalid(f"must be a table (got {_show(value)})")
    checked = {}
    for name, item in value.items():
        if name not in schema:
            import difflib  # only for a message; not worth its memory in a running daemon

            close = difflib.get_close_matches(name, list(schema), n=1)
            raise _Invalid("unknown key", name, did_you_mean=close[0] if close else None)
        checked[name] = _check_at(name, schema[name].check, item)
    for name, key in schema.items():
        if name in checked:
            continue
        if key.default is REQUIRED:
            raise _Invalid("required", name)
        checked[name] = None if key.default is None else _check_at(name, key.check, key.default)
    return {name: checked[name] for name in schema}


def table(schema: Mapping[str, Key], *, then: Callable[[dict[str, Any]], None] | None = None) -> Check:
    """A check for a table with these keys; `then` checks rules across its keys."""

    def check(value: Any) -> dict[str, Any]:
        result = _validate_table(value, schema)
        if then is not None:
            then(result)
        return result

    return check


def boolean() -> Check:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(f"must be true or false (got {_show(value)})")
        return value

    return check


def integer(*, min: int | None = None, max: int | None = None) -> Check:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(f"must be an integer (got {_show(value)})")
        _check_bounds(value, min=min, max=max)
        return value

    return check


def number(*, min: float | None = None, above: float | None = None, max: float | None = None) -> Check:
    """A float; TOML integers are accepted, booleans never. `above` is an exclusive minimum."""

    def check(value: Any) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Invalid(f"must be a number (got {_show(value)})")
        if not math.isfinite(value):
            raise _Invalid(f"must be a finite number (got {_show(value)})")
        if above is not None and not value > above:
            raise _Invalid(f"must be > {above} (got {_show(value)})")
        _check_bounds(value, min=min, max=max)
        return float(value)

    return check


def _check_bounds(value: float, *, min: float | None, max: float | None) -> None:
    if min is not None and value < min:
        raise _Invalid(f"must be >= {min} (got {_show(value)})")
    if max is not None and value > max:
        raise _Invalid(f"must be <= {max} (got {_show(value)})")


def string(*, pattern: str | None = None, allow_empty: bool = False) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"must be a string (got {_show(value)})")
        if not value and not allow_empty:
            raise _Invalid("must not be empty")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise _Invalid(f"must match {pattern} (got {_show(value)})")
        return value

    return check


def choice(
    *options: Any, aliases: Mapping[Any, Any] | None = None, show: Callable[[Any], str] = _show
) -> Check:
    """One of `options` (all strings or all integers); an alias is accepted and replaced."""
    aliases = aliases or {}
    type_check = integer() if isinstance(options[0], int) else string()

    def check(value: Any) -> Any:
        value = aliases.get(type_check(value), value)
        if value not in options:
            raise _Invalid(f"must be {_either([show(option) for option in options])} (got {show(value)})")
        return value

    return check


def size(*, min_bytes: int, min_shown: str) -> Check:
    """Bytes, as an integer or as a string with a unit ("512MB", "64MiB", ...)."""

    def check(value: Any) -> int:
        if isinstance(value, str):
            try:
                count = parse_size(value)
            except ValueError:
                raise _Invalid(f'must be a size like "512MB" or "64MiB" (got {_show(value)})') from None
        elif isinstance(value, int) and not isinstance(value, bool):
            count = value
        else:
            raise _Invalid(f'must be a byte count or a size like "512MB" (got {_show(value)})')
        if count < min_bytes:
            raise _Invalid(f"must be >= {min_shown} (got {_show(value)})")
        return count

    return check


# --- Checks for particular values --------------------------------------------------------------


def _broker_url(value: Any) -> BrokerAddress:
    url = string()(value)
    try:
        return parse_broker_url(url, credentials_hint="broker.username and broker.password_file")
    except ValueError as err:
        raise _Invalid(str(err)) from None


def _topic_prefix(value: Any) -> str:
    prefix = string()(value)
    if prefix.startswith("/") or prefix.endswith("/"):
        raise _Invalid(f"must not start or end with '/' (got {_show(prefix)})")
    if "//" in prefix:
        raise _Invalid(f"must not contain an empty topic level (got {_show(prefix)})")
    if "+" in prefix or "#" in prefix:
        raise _Invalid(f"must not contain the MQTT wildcards '+' or '#' (got {_show(prefix)})")
    return prefix


def _i2c_bus(value: Any) -> str:
    bus = string()(value)
    if bus != "sim" and not re.fullmatch(r"i2c:\d+", bus):
        raise _Invalid(f'must be "sim" or "i2c:N" (got {_show(bus)})')
    return bus


def _serial_port(value: Any) -> str:
    port = string()(value)
    if port != "sim" and not port.startswith("/") and "://" not in port:
        raise _Invalid(f'must be "sim", a device path or a pyserial URL (got {_show(port)})')
    return port


def _host_root(value: Any) -> str:
    root = string()(value)
    if root != "sim" and not root.startswith("/"):
        raise _Invalid(f'must be "sim" or an absolute path (got {_show(root)})')
    return root


_PATH = string()  # a file path; relative ones are resolved against the config file's directory
_GPIO_PIN = integer(min=0, max=27)  # BCM numbering, GPIO0..GPIO27 on the 40-pin header
_PIN_FACTORY = choice("lgpio", "sim", aliases={"mock": "sim"})  # "mock": gpiozero's MockFactory


# --- The schema --------------------------------------------------------------------------------

NODE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
SENSOR_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"


def _broker_credentials_fit(broker: dict[str, Any]) -> None:
    if broker["password_file"] is not None and broker["username"] is None:
        raise _Invalid("needs broker.username", "password_file")
    for present, missing in (("client_cert", "client_key"), ("client_key", "client_cert")):
        if broker[present] is not None and broker[missing] is None:
            raise _Invalid(f"needs broker.{missing} (a client certificate and its key go together)", present)
    if not broker["url"].tls:
        for name in ("client_cert", "client_key", "ca_file"):
            if broker[name] is not None:
                raise _Invalid("needs TLS: use an mqtts:// broker.url", name)
    try:
        refuse_clear_password(
            broker["url"].tls,
            broker["password_file"] is not None,
            insecure=broker["allow_insecure"],
            insecure_hint="set broker.allow_insecure = true",
        )
    except ValueError as err:
        raise _Invalid(str(err), "password_file") from None


SECTIONS: dict[str, dict[str, Key]] = {
    "node": {
        "id": Key(string(pattern=NODE_ID_PATTERN)),
        "site": Key(string(allow_empty=True), ""),
        "location": Key(
            table({"lat": Key(number(min=-90, max=90)), "lon": Key(number(min=-180, max=180))}), None
        ),
    },
    "broker": {
        "url": Key(_broker_url),
        "username": Key(string(), None),
        "password_file": Key(_PATH, None),
        "client_cert": Key(_PATH, None),
        "client_key": Key(_PATH, None),
        "ca_file": Key(_PATH, None),
        "topic_prefix": Key(_topic_prefix, "city/terrassa/nodes"),
        "keepalive_s": Key(integer(min=5, max=3600), 30),
        "allow_insecure": Key(boolean(), False),  # a password over mqtt:// (issue 11)
    },
    "buffer": {
        "path": Key(_PATH, "/var/lib/edge-node/buffer.db"),
        "max_rows": Key(integer(min=100), 2_000_000),
        "max_bytes": Key(size(min_bytes=10**6, min_shown="1MB"), "512MB"),
        "sync_interval_s": Key(number(above=0, max=3600), 10),
    },
    "forward": {
        "max_inflight": Key(integer(min=1, max=1000), 20),
        "batch_max": Key(integer(min=1, max=10_000), 100),
        "backfill_rate": Key(number(min=0), 500),
        "reconnect_max_s": Key(number(min=1, max=3600), 30),
    },
    "health": {
        "heartbeat_s": Key(number(min=1), 60),
    },
    "remote": {
        "trusted_keys": Key(lambda value: _trusted_keys(value), []),
        "confirm_s": Key(number(min=1, max=3600), 120),
    },
    "simulation": {
        "seed": Key(integer(min=0), 42),
        "faults": Key(lambda value: _simulated_faults(value), []),
    },
}
_FAULT = table(
    {
        "sensor": Key(string()),
        "fault": Key(string()),
        "at_s": Key(number(min=0), 0),
        "for_s": Key(number(above=0), None),
    }
)


def _simulated_faults(value: Any) -> tuple[dict[str, Any], ...]:
    """`[[simulation.faults]]` tables; which sensor and fault names exist is checked at start."""
    if not isinstance(value, list):
        raise _Invalid(f"must be an array of tables (got {_show(value)})")
    return tuple(_check_at(str(i), _FAULT, item) for i, item in enumerate(value))


def _trusted_keys(value: Any) -> list[str]:
    from .signing import parse_public_key  # base64 only: no cryptography until a command arrives

    if not isinstance(value, list):
        raise _Invalid(f'must be an array of "ed25519:..." keys (got {_show(value)})')
    for i, key in enumerate(value):
        try:
            parse_public_key(key)
        except ValueError as err:
            raise _Invalid(f"{err} (got {_show(key)})", str(i)) from None
    return list(value)


SECTION_RULES = {"broker": _broker_credentials_fit}  # rules across the keys of one section


@dataclass(frozen=True)
class DriverSchema:
    """What `[sensors.NAME]` accepts for one driver, besides `driver` and `interval_s`."""

    interval_s: float  # the default sampling interval
    options: Mapping[str, Key]
    # The hardware a sensor holds, as (option, description), so no two sensors hold the same;
    # None when it holds nothing exclusive (e.g. a simulated bus).
    claim: Callable[[Mapping[str, Any]], tuple[str, str] | None] | None = None


def _gpio_claim(options: Mapping[str, Any]) -> tuple[str, str]:
    return "pin", f"GPIO{options['pin']}"


DRIVERS: dict[str, DriverSchema] = {
    "bme280": DriverSchema(
        interval_s=10,
        options={
            "bus": Key(_i2c_bus, "i2c:1"),
            "address": Key(choice(0x76, 0x77, show=hex), 0x76),  # hex, as datasheets write it
        },
        claim=lambda o: (
            None if o["bus"] == "sim" else ("address", f"I2C address {o['address']:#x} on {o['bus']}")
        ),
    ),
    "sds011": DriverSchema(
        interval_s=60,
        options={
            "port": Key(_serial_port, "/dev/serial0"),
            # Without `duty` the sensor runs continuously; with it, it warms up for on_s (the fan
            # and laser need >= 10 s), is read, and sleeps for off_s to spare the laser.
            "duty": Key(table({"on_s": Key(number(min=10)), "off_s": Key(number(min=0))}), None),
        },
        claim=lambda o: None if o["port"] == "sim" else ("port", f"serial port {o['port']}"),
    ),
    "rain_gauge": DriverSchema(
        interval_s=60,
        options={
            "pin": Key(_GPIO_PIN),
            "pin_factory": Key(_PIN_FACTORY, "lgpio"),
            "mm_per_tip": Key(number(above=0), 0.2794),
        },
        claim=_gpio_claim,
    ),
    "anemometer": DriverSchema(
        interval_s=10,
        options={
            "pin": Key(_GPIO_PIN),
            "pin_factory": Key(_PIN_FACTORY, "lgpio"),
            "ms_per_hz": Key(number(above=0), 0.667),
        },
        claim=_gpio_claim,
    ),
    "pi_health": DriverSchema(
        interval_s=60,
        options={"root": Key(_host_root, "/")},
    ),
}


def _driver_name(value: Any) -> str:
    name = string()(value)
    if name not in DRIVERS:
        raise _Invalid(f"unknown driver {_show(name)} (known: {', '.join(sorted(DRIVERS))})")
    return name


_CALIBRATION = table({"offset": Key(number(), 0), "slope": Key(number(above=0), 1)})


def _calibration(value: Any) -> dict[str, dict[str, float]]:
    """`{ temperature = { offset = -0.4 }, humidity = { slope = 1.03 } }`: value' = value * slope + offset."""
    if not isinstance(value, dict):
        raise _Invalid(f"must be a table of value names (got {_show(value)})")
    return {name: _check_at(name, _CALIBRATION, item) for name, item in value.items()}


def _sensor(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"must be a table (got {_show(value)})")
    if "driver" not in value:
        raise _Invalid("required", "driver")
    driver = DRIVERS[_check_at("driver", _driver_name, value["driver"])]
    schema = {
        "driver": Key(_driver_name),
        "interval_s": Key(number(min=1), driver.interval_s),
        "calibration": Key(_calibration, {}),
        **driver.options,
    }
    return _validate_table(value, schema)


def _sensors(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise _Invalid(f"must be a table (got {_show(value)})")
    sensors = {}
    holders: dict[str, str] = {}  # hardware description -> sensor name
    for name, item in value.items():
        if not re.fullmatch(SENSOR_NAME_PATTERN, name):
            raise _Invalid(
                f"sensor names must match {SENSOR_NAME_PATTERN} (they become MQTT topic levels)", name
            )
        sensors[name] = sensor = _check_at(name, _sensor, item)
        claim = DRIVERS[sensor["driver"]].claim
        held = claim(sensor) if claim is not None else None
        if held is not None:
            option, hardware = held
            if hardware in holders:
                raise _Invalid(f"{hardware} is already used by sensors.{holders[hardware]}", name, option)
            holders[hardware] = name
    return sensors


CONFIG_SCHEMA: dict[str, Key] = {
    **{name: Key(table(keys, then=SECTION_RULES.get(name)), {}) for name, keys in SECTIONS.items()},
    "sensors": Key(_sensors, {}),
}


# --- From validated values to a Config ---------------------------------------------------------


def _parse(
    text: str, data: bytes, source: str, base_dir: Path, layer: Mapping[str, Any] | None = None
) -> Config:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(source, None, f"invalid TOML: {err}") from err
    if layer:
        document = _apply_layer(document, layer, source)
        data += b"\0" + json.dumps(layer, sort_keys=True, separators=(",", ":")).encode()
    try:
        config = _build(_validate_table(document, CONFIG_SCHEMA), source, base_dir, data)
        _check_files_readable(config.broker)
    except _Invalid as err:
        problem = err.problem
        if err.did_you_mean is not None:
            problem += f" (did you mean {_dotted([*err.path[:-1], err.did_you_mean])}?)"
        raise ConfigError(source, _dotted(err.path), problem) from None
    return config


def _dotted(path: list[str]) -> str:
    """A key path as TOML writes it: bare keys as they are, other keys quoted."""
    return ".".join(part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part) for part in path)


def _build(values: dict[str, Any], source: str, base_dir: Path, data: bytes) -> Config:
    def resolve(path: str | None) -> Path | None:
        return None if path is None else base_dir / path

    node, broker, buffer = values["node"], values["broker"], values["buffer"]
    location = node["location"] or {"lat": None, "lon": None}
    address: BrokerAddress = broker["url"]
    return Config(
        source=source,
        node=NodeConfig(id=node["id"], site=node["site"], lat=location["lat"], lon=location["lon"]),
        broker=BrokerConfig(
            url=address.url,
            host=address.host,
            port=address.port,
            tls=address.tls,
            username=broker["username"],
            password_file=resolve(broker["password_file"]),
            client_cert=resolve(broker["client_cert"]),
            client_key=resolve(broker["client_key"]),
            ca_file=resolve(broker["ca_file"]),
            topic_prefix=broker["topic_prefix"],
            keepalive_s=broker["keepalive_s"],
        ),
        buffer=BufferConfig(
            path=base_dir / buffer["path"],  # always given: it has a default
            max_rows=buffer["max_rows"],
            max_bytes=buffer["max_bytes"],
            sync_interval_s=buffer["sync_interval_s"],
        ),
        forward=ForwardConfig(**values["forward"]),
        health=HealthConfig(**values["health"]),
        sensors={
            name: SensorConfig(
                name=name,
                driver=sensor["driver"],
                interval_s=sensor["interval_s"],
                options={k: v for k, v in sensor.items() if k not in ("driver", "interval_s", "calibration")},
                calibration=sensor["calibration"],
            )
            for name, sensor in values["sensors"].items()
        },
        simulation=SimulationConfig(**values["simulation"]),
        config_hash=hashlib.sha256(data).hexdigest()[:16],
        remote=RemoteConfig(
            trusted_keys=tuple(values["remote"]["trusted_keys"]), confirm_s=values["remote"]["confirm_s"]
        ),
    )


def _check_files_readable(broker: BrokerConfig) -> None:
    for name in ("password_file", "client_cert", "client_key", "ca_file"):
        path = getattr(broker, name)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise _Invalid(f"cannot read {path}: {err.strerror or err}", "broker", name) from None


# --- The remote layer (issue 13): dotted keys set by signed commands over the technician's file ----


def load_layered(path: str | os.PathLike[str], layer: Mapping[str, Any]) -> Config:
    """The config file at `path` with `layer` ({"sensors.bme280.interval_s": 5, ...}) laid over it,
    validated as one file would be: the same one-line errors, naming the base file and the key.
    An empty layer gives exactly `load_config(path)` (same `config_hash`)."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = file.read()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return load_config(path)  # the same error as at start
    return _parse(text, data, source, Path(os.path.abspath(source)).parent, layer)


def _apply_layer(document: dict[str, Any], layer: Mapping[str, Any], source: str) -> dict[str, Any]:
    merged = json.loads(json.dumps(document, default=str))  # a deep copy; dates are not configurable
    for dotted, value in layer.items():
        parts = dotted.split(".")
        table_ = merged
        for depth, part in enumerate(parts[:-1]):
            table_ = table_.setdefault(part, {})
            if not isinstance(table_, dict):
                raise ConfigError(
                    source, ".".join(parts[: depth + 1]), "is not a table: cannot set keys in it"
                )
        table_[parts[-1]] = value
    return merged
