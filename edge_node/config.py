"""The node's configuration: one TOML file, loaded and validated once at start-up (DESIGN §5).

Every problem is a `ConfigError` whose message is one line naming the file, the dotted key and
the problem, e.g. ``config.toml: sensors.sds011.interval_s: must be >= 1 (got 0)``.

The schema is declarative, in the manner of ESPHome's ``CONFIG_SCHEMA``: each section, and each
driver's options, is a table of `Key`s; a key is a check (which validates one TOML value and
converts it) and a default. A default is written as it would be in the file and goes through the
same check, so a missing section is validated as an empty table and reports its own missing
required keys. Unknown keys are errors. The sensors' options are declared by their components
(`sensors/<driver>/`, the schema language in `sensors.schema`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensors import components
from sensors.component import Component
from sensors.schema import (
    Check,
    Invalid,
    Key,
    boolean,
    check_at,
    choice,
    integer,
    number,
    show,
    string,
    table,
    validate_table,
)

from .broker_url import BrokerAddress, parse_broker_url, refuse_clear_password

__all__ = [
    "DRIVERS",
    "BrokerConfig",
    "BufferConfig",
    "Config",
    "ConfigError",
    "SECTIONS",
    "ForwardConfig",
    "RemoteConfig",
    "UpdateConfig",
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
    protocol: str = "5"  # MQTT "5" (PUBACKs say whether the broker accepted) or "3.1.1" (issue 10)

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
    # The node's X25519 key pair for secrets sent to it (rotate-password), made at provisioning;
    # None: a node provisioned before that, whose key pair is made in its state directory.
    node_key: Path | None = None


@dataclass(frozen=True)
class UpdateConfig:  # software updates (issue 16, edge_node/update.py)
    root: Path  # versions/<v>/venv side by side, `current` the running one
    confirm_s: float  # a new version must prove healthy this soon, else the node switches back
    max_kbps: float  # download rate limit, kilobits/s; 0: none


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
    update: UpdateConfig = UpdateConfig(Path("/opt/edge-node"), 300.0, 0.0)

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


def size(*, min_bytes: int, min_shown: str) -> Check:
    """Bytes, as an integer or as a string with a unit ("512MB", "64MiB", ...)."""

    def check(value: Any) -> int:
        if isinstance(value, str):
            try:
                count = parse_size(value)
            except ValueError:
                raise Invalid(f'must be a size like "512MB" or "64MiB" (got {show(value)})') from None
        elif isinstance(value, int) and not isinstance(value, bool):
            count = value
        else:
            raise Invalid(f'must be a byte count or a size like "512MB" (got {show(value)})')
        if count < min_bytes:
            raise Invalid(f"must be >= {min_shown} (got {show(value)})")
        return count

    return check


# --- Checks for particular values --------------------------------------------------------------


def _broker_url(value: Any) -> BrokerAddress:
    url = string()(value)
    try:
        return parse_broker_url(url, credentials_hint="broker.username and broker.password_file")
    except ValueError as err:
        raise Invalid(str(err)) from None


def _topic_prefix(value: Any) -> str:
    prefix = string()(value)
    if prefix.startswith("/") or prefix.endswith("/"):
        raise Invalid(f"must not start or end with '/' (got {show(prefix)})")
    if "//" in prefix:
        raise Invalid(f"must not contain an empty topic level (got {show(prefix)})")
    if "+" in prefix or "#" in prefix:
        raise Invalid(f"must not contain the MQTT wildcards '+' or '#' (got {show(prefix)})")
    return prefix


_PATH = string()  # a file path; relative ones are resolved against the config file's directory


# --- The schema --------------------------------------------------------------------------------

NODE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
SENSOR_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"


def _broker_credentials_fit(broker: dict[str, Any]) -> None:
    if broker["password_file"] is not None and broker["username"] is None:
        raise Invalid("needs broker.username", "password_file")
    for present, missing in (("client_cert", "client_key"), ("client_key", "client_cert")):
        if broker[present] is not None and broker[missing] is None:
            raise Invalid(f"needs broker.{missing} (a client certificate and its key go together)", present)
    if not broker["url"].tls:
        for name in ("client_cert", "client_key", "ca_file"):
            if broker[name] is not None:
                raise Invalid("needs TLS: use an mqtts:// broker.url", name)
    try:
        refuse_clear_password(
            broker["url"].tls,
            broker["password_file"] is not None,
            insecure=broker["allow_insecure"],
            insecure_hint="set broker.allow_insecure = true",
        )
    except ValueError as err:
        raise Invalid(str(err), "password_file") from None


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
        "protocol": Key(choice("5", "3.1.1", aliases={"5.0": "5"}), "5"),
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
        "node_key": Key(_PATH, None),
    },
    "update": {
        "root": Key(_PATH, "/opt/edge-node"),
        "confirm_s": Key(number(min=5, max=3600), 300),
        "max_kbps": Key(number(min=0), 0),
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
        raise Invalid(f"must be an array of tables (got {show(value)})")
    return tuple(check_at(str(i), _FAULT, item) for i, item in enumerate(value))


def _trusted_keys(value: Any) -> list[str]:
    from .signing import parse_public_key  # base64 only: no cryptography until a command arrives

    if not isinstance(value, list):
        raise Invalid(f'must be an array of "ed25519:..." keys (got {show(value)})')
    for i, key in enumerate(value):
        try:
            parse_public_key(key)
        except ValueError as err:
            raise Invalid(f"{err} (got {show(key)})", str(i)) from None
    return list(value)


SECTION_RULES = {"broker": _broker_credentials_fit}  # rules across the keys of one section


# Every sensor component's declaration, by driver name (the registry: sensors/__init__.py).
DRIVERS: Mapping[str, Component] = components()


def _driver_name(value: Any) -> str:
    name = string()(value)
    if name not in DRIVERS:
        raise Invalid(f"unknown driver {show(name)} (known: {', '.join(sorted(DRIVERS))})")
    return name


_CALIBRATION = table({"offset": Key(number(), 0), "slope": Key(number(above=0), 1)})


def _calibration(value: Any) -> dict[str, dict[str, float]]:
    """`{ temperature = { offset = -0.4 }, humidity = { slope = 1.03 } }`: value' = value * slope + offset."""
    if not isinstance(value, dict):
        raise Invalid(f"must be a table of value names (got {show(value)})")
    return {name: check_at(name, _CALIBRATION, item) for name, item in value.items()}


def _sensor(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"must be a table (got {show(value)})")
    if "driver" not in value:
        raise Invalid("required", "driver")
    driver = DRIVERS[check_at("driver", _driver_name, value["driver"])]
    schema = {
        "driver": Key(_driver_name),
        "interval_s": Key(number(min=1), driver.interval_s),
        "calibration": Key(_calibration, {}),
        **driver.options,
    }
    return validate_table(value, schema)


def _sensors(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise Invalid(f"must be a table (got {show(value)})")
    sensors = {}
    holders: dict[str, str] = {}  # hardware description -> sensor name
    for name, item in value.items():
        if not re.fullmatch(SENSOR_NAME_PATTERN, name):
            raise Invalid(
                f"sensor names must match {SENSOR_NAME_PATTERN} (they become MQTT topic levels)", name
            )
        sensors[name] = sensor = check_at(name, _sensor, item)
        claim = DRIVERS[sensor["driver"]].claim
        held = claim(sensor) if claim is not None else None
        if held is not None:
            option, hardware = held
            if hardware in holders:
                raise Invalid(f"{hardware} is already used by sensors.{holders[hardware]}", name, option)
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
        config = _build(validate_table(document, CONFIG_SCHEMA), source, base_dir, data)
        _check_files_readable(config.broker)
        _check_node_key(config.remote.node_key)
    except Invalid as err:
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
            protocol=broker["protocol"],
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
            trusted_keys=tuple(values["remote"]["trusted_keys"]),
            confirm_s=values["remote"]["confirm_s"],
            node_key=resolve(values["remote"]["node_key"]),
        ),
        update=UpdateConfig(
            root=base_dir / values["update"]["root"],
            confirm_s=values["update"]["confirm_s"],
            max_kbps=values["update"]["max_kbps"],
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
            raise Invalid(f"cannot read {path}: {err.strerror or err}", "broker", name) from None


def _check_node_key(path: Path | None) -> None:
    """Readable and a PEM private key; that it is an X25519 one is checked where it is used
    (the daemon does not import `cryptography` to start)."""
    if path is None:
        return
    try:
        with open(path, "rb") as file:
            pem = file.read(4096)
    except OSError as err:
        raise Invalid(f"cannot read {path}: {err.strerror or err}", "remote", "node_key") from None
    if b"-----BEGIN PRIVATE KEY-----" not in pem:
        raise Invalid(
            f"{path} is not a PEM private key (`edge-node provision` makes it)", "remote", "node_key"
        )


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
