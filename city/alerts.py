"""Alerts for the city's resilience team, from rules in a file the city keeps (TOML).

    [settings]
    topic_prefix = "city/terrassa/alerts"   # published retained: {prefix}/{area}/{alert id}
    step_s = 300                             # the rules are evaluated every step_s of stored time
    lookback_s = 43200                       # how far back the evaluation starts (state builds up)

    [areas."Centre"]                         # optional; see city.areas
    box = [41.560, 2.005, 41.568, 2.013]

    [[alert]]
    id = "flash-flood"
    title = "Flash flood risk"
    kind = "rain"            # eaqi | rain | heat_index | noise
    window_s = 900           # rain: intensity in mm/h over this window; noise: LAeq over it
    raise_at = 30.0          # eaqi: a band key ("poor"); others: mm/h, degrees C, dB(A)
    clear_at = 5.0           # hysteresis: the alert ends only at or below this
    min_duration_s = 1200    # the condition must hold this long before the alert is raised
                             # (rain, noise: longer than window_s, so one reading cannot)
    clear_after_s = 1800     # and be clear this long before it ends
    min_nodes = 1            # nodes of the area that must meet raise_at

Each rule is evaluated per area at steps of `step_s` over the stored readings (so one noisy
reading never raises an alert: it must hold for `min_duration_s`, and an alert ends only once
the value has stayed at or below `clear_at` for `clear_after_s`). An alert names its area, the
nodes and readings behind it, since when it holds, and what ends it.

Metrics per node at a step t:
- eaqi: the band index (1..6) of the last complete hour before t (city.eaqi);
- rain: the `rain` fallen in (t - window_s, t], as mm/h;
- heat_index: the NWS heat index (city.heat) of the mean temperature and humidity of the last
  15 minutes;
- noise: the LAeq (energy mean of `laeq`) over (t - window_s, t].
Readings flagged warming_up / stuck / out_of_range are never used.
"""

from __future__ import annotations

import bisect
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import eaqi, heat
from .areas import AreaError, Areas, parse_areas
from .samples import HOUR_S, Sample, iso

KINDS = ("eaqi", "rain", "heat_index", "noise")
UNITS = {"eaqi": "band", "rain": "mm/h", "heat_index": "°C", "noise": "dB(A)"}
HEAT_WINDOW_S = 900
ALERT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


class RulesError(ValueError):
    """A rules file that cannot be used: the message names the file and the key."""


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    kind: str
    raise_at: float
    clear_at: float
    window_s: float
    min_duration_s: float
    clear_after_s: float
    min_nodes: int

    def describe_end(self) -> str:
        held = _duration(self.clear_after_s)
        if self.kind == "eaqi":
            band = eaqi.BANDS[int(self.clear_at) - 1].label.lower()
            return f"the air index is {band} or better for {held}"
        window = _duration(self.window_s)
        what = {
            "rain": f"rain falls to {self.clear_at:g} mm/h or less (over {window})",
            "heat_index": f"the heat index falls to {self.clear_at:g} °C or less",
            "noise": f"the noise falls to {self.clear_at:g} dB(A) LAeq or less (over {window})",
        }[self.kind]
        return f"{what} for {held}"

    def describe_raise(self, value: float) -> str:
        if self.kind == "eaqi":
            return f"air index {eaqi.BANDS[int(value) - 1].label.lower()}"
        return f"{value:.1f} {UNITS[self.kind]}"


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...]
    areas: Areas
    topic_prefix: str = "city/terrassa/alerts"
    step_s: float = 300.0
    lookback_s: float = 12 * HOUR_S

    @property
    def history_s(self) -> float:
        """How much stored history an evaluation reads."""
        widest = max((max(r.window_s, HOUR_S * 2) for r in self.rules), default=HOUR_S * 2)
        return self.lookback_s + widest


def _duration(seconds: float) -> str:
    if seconds >= HOUR_S and seconds % HOUR_S == 0:
        return f"{int(seconds // HOUR_S)} h"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds:g} s"


def load_rules(path: str | Path) -> Rules:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise RulesError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RulesError(f"{path}: not valid TOML: {err}") from None
    return parse_rules(data, str(path))


def _number(spec: Mapping, key: str, where: str, default=None, minimum: float = 0.0) -> float:
    value = spec.get(key, default)
    if value is None:
        raise RulesError(f"{where}.{key}: required")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RulesError(f"{where}.{key}: must be a number (got {value!r})")
    if value < minimum:
        raise RulesError(f"{where}.{key}: must be >= {minimum:g} (got {value!r})")
    return float(value)


def parse_rules(data: Mapping, name: str = "alerts.toml") -> Rules:
    unknown = set(data) - {"settings", "areas", "alert"}
    if unknown:
        raise RulesError(f"{name}: {sorted(unknown)[0]}: unknown table (expected settings, areas, alert)")
    settings = data.get("settings", {})
    if not isinstance(settings, Mapping):
        raise RulesError(f"{name}: settings: must be a table")
    unknown = set(settings) - {"topic_prefix", "step_s", "lookback_s"}
    if unknown:
        raise RulesError(f"{name}: settings.{sorted(unknown)[0]}: unknown key")
    prefix = settings.get("topic_prefix", "city/terrassa/alerts")
    if (
        not isinstance(prefix, str)
        or not prefix
        or any(c in prefix for c in "+#")
        or prefix.strip("/") != prefix
    ):
        raise RulesError(f"{name}: settings.topic_prefix: must be a topic without wildcards or edge '/'")
    step_s = _number(settings, "step_s", f"{name}: settings", 300, minimum=10)
    lookback_s = _number(settings, "lookback_s", f"{name}: settings", 12 * HOUR_S, minimum=HOUR_S)
    try:
        areas = parse_areas(data.get("areas", {}), f"{name}: areas")
    except AreaError as err:
        raise RulesError(str(err)) from None
    alerts = data.get("alert", [])
    if not isinstance(alerts, list):
        raise RulesError(f"{name}: alert: must be an array of tables ([[alert]])")
    rules = []
    seen = set()
    for i, spec in enumerate(alerts):
        where = f"{name}: alert[{i}]"
        if not isinstance(spec, Mapping):
            raise RulesError(f"{where}: must be a table")
        rules.append(_parse_rule(spec, where))
        if rules[-1].id in seen:
            raise RulesError(f"{where}.id: {rules[-1].id!r} is used twice")
        seen.add(rules[-1].id)
    return Rules(tuple(rules), areas, prefix, step_s, lookback_s)


RULE_KEYS = {
    "id",
    "title",
    "kind",
    "raise_at",
    "clear_at",
    "window_s",
    "min_duration_s",
    "clear_after_s",
    "min_nodes",
}


def _parse_rule(spec: Mapping, where: str) -> Rule:
    rule_id = spec.get("id")
    if not isinstance(rule_id, str) or not ALERT_ID.match(rule_id):
        raise RulesError(f"{where}.id: must be 1-48 of a-z, 0-9, '-', '_' (got {rule_id!r})")
    where = f"{where} ({rule_id})"
    unknown = set(spec) - RULE_KEYS
    if unknown:
        raise RulesError(
            f"{where}.{sorted(unknown)[0]}: unknown key (expected {', '.join(sorted(RULE_KEYS))})"
        )
    kind = spec.get("kind")
    if kind not in KINDS:
        raise RulesError(f"{where}.kind: must be one of {', '.join(KINDS)} (got {kind!r})")
    title = spec.get("title", rule_id)
    if not isinstance(title, str) or not title.strip():
        raise RulesError(f"{where}.title: must be a non-empty string")
    if kind == "eaqi":
        raise_at, clear_at = (_band(spec, key, where) for key in ("raise_at", "clear_at"))
        if raise_at < 2:
            raise RulesError(f"{where}.raise_at: an alert needs a band worse than good (got 'good')")
        if "clear_at" not in spec:
            clear_at = raise_at - 1
    else:
        raise_at = _number(spec, "raise_at", where, minimum=-100.0)
        clear_at = _number(spec, "clear_at", where, raise_at, minimum=-100.0)
    if clear_at > raise_at:
        raise RulesError(
            f"{where}.clear_at: must not be above raise_at (hysteresis: {clear_at:g} > {raise_at:g})"
        )
    default_window = {"rain": 900, "noise": HOUR_S}.get(kind, 0)
    window_s = _number(spec, "window_s", where, default_window, minimum=0)
    if kind in ("rain", "noise") and window_s < 60:
        raise RulesError(f"{where}.window_s: must be >= 60 for {kind} (got {window_s:g})")
    min_duration_s = _number(spec, "min_duration_s", where, 0)
    if kind in ("rain", "noise") and min_duration_s <= window_s:
        raise RulesError(
            f"{where}.min_duration_s: must be longer than window_s ({window_s:g}), "
            f"else one reading in the window could raise the alert (got {min_duration_s:g})"
        )
    min_nodes = spec.get("min_nodes", 1)
    if isinstance(min_nodes, bool) or not isinstance(min_nodes, int) or min_nodes < 1:
        raise RulesError(f"{where}.min_nodes: must be an integer >= 1 (got {min_nodes!r})")
    return Rule(
        id=rule_id,
        title=title.strip(),
        kind=kind,
        raise_at=raise_at,
        clear_at=clear_at,
        window_s=window_s,
        min_duration_s=min_duration_s,
        clear_after_s=_number(spec, "clear_after_s", where, 0),
        min_nodes=min_nodes,
    )


def _band(spec: Mapping, key: str, where: str) -> float:
    value = spec.get(key)
    if value is None and key == "clear_at":
        return 0.0
    if value not in eaqi.BAND_BY_KEY:
        raise RulesError(f"{where}.{key}: must be a band: {', '.join(eaqi.BAND_BY_KEY)} (got {value!r})")
    return float(eaqi.BAND_BY_KEY[value].index)


# -- evaluation ---------------------------------------------------------------------------------


@dataclass
class NodeReadings:
    node: str
    lat: float | None
    lon: float | None
    samples: list[Sample]  # every sensor's readings, any order


@dataclass
class _Series:
    """One value of one node, sorted by time, flagged readings left out; prefix sums for windows."""

    ts: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    cumulative: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, samples: Iterable[Sample], name: str, transform=None) -> _Series:
        points = sorted((s.ts, float(s.values[name])) for s in samples if name in s.values and not s.excluded)
        out = cls([p[0] for p in points], [transform(p[1]) if transform else p[1] for p in points])
        total = 0.0
        for value in out.values:
            total += value
            out.cumulative.append(total)
        return out

    def window(self, start: float, end: float) -> tuple[int, int]:
        """Indices [i, j) of the readings with start < ts <= end."""
        return bisect.bisect_right(self.ts, start), bisect.bisect_right(self.ts, end)

    def total(self, start: float, end: float) -> tuple[float, int]:
        i, j = self.window(start, end)
        if j <= i:
            return 0.0, 0
        return self.cumulative[j - 1] - (self.cumulative[i - 1] if i else 0.0), j - i

    def last(self, end: float) -> tuple[float, float] | None:
        j = bisect.bisect_right(self.ts, end)
        return (self.ts[j - 1], self.values[j - 1]) if j else None


class _NodeMetric:
    """A rule's metric of one node at any step, and the reading behind it."""

    def __init__(self, rule: Rule, node: NodeReadings, now: float):
        self.rule = rule
        kind = rule.kind
        if kind == "rain":
            self.series = {"rain": _Series.of(node.samples, "rain")}
        elif kind == "noise":
            self.series = {"laeq": _Series.of(node.samples, "laeq", lambda db: 10 ** (db / 10))}
        elif kind == "heat_index":
            self.series = {
                "temperature": _Series.of(node.samples, "temperature"),
                "humidity": _Series.of(node.samples, "humidity"),
            }
        else:
            pm = [s for s in node.samples if not eaqi.POLLUTANTS_SET.isdisjoint(s.values)]
            self.hours = {h.hour: h for h in eaqi.hourly_index(pm, now=now) if not h.partial}

    def at(self, t: float) -> tuple[float | None, dict | None]:
        rule = self.rule
        if rule.kind == "eaqi":
            hour = self.hours.get(int(t // HOUR_S) * HOUR_S - HOUR_S)
            if hour is None or hour.band is None:
                return None, None
            band = eaqi.BAND_BY_KEY[hour.band]
            reading = {"hour": iso(hour.hour), "band": hour.band, **hour.means}
            return float(band.index), reading
        if rule.kind == "rain":
            series = self.series["rain"]
            total, count = series.total(t - rule.window_s, t)
            if count == 0:
                return None, None
            rate = total * HOUR_S / rule.window_s
            return rate, {"rain_mm": round(total, 2), "window_s": rule.window_s, "readings": count}
        if rule.kind == "noise":
            series = self.series["laeq"]
            energy, count = series.total(t - rule.window_s, t)
            if count == 0:
                return None, None
            level = 10 * math.log10(energy / count)
            return level, {"laeq": round(level, 1), "window_s": rule.window_s, "readings": count}
        temperature, humidity = self.series["temperature"], self.series["humidity"]
        t_sum, t_n = temperature.total(t - HEAT_WINDOW_S, t)
        h_sum, h_n = humidity.total(t - HEAT_WINDOW_S, t)
        if not t_n or not h_n:
            return None, None
        mean_t, mean_h = t_sum / t_n, h_sum / h_n
        hi = heat.heat_index_c(mean_t, mean_h)
        return hi, {"temperature": round(mean_t, 1), "humidity": round(mean_h, 1), "heat_index": hi}


@dataclass
class Alert:
    rule: Rule
    area: str
    state: str  # active | ended
    since: float  # when the condition began to hold (the alert was raised min_duration_s later)
    raised_at: float
    ended_at: float | None
    value: float | None
    nodes: list[str]
    readings: list[dict]
    topic: str

    def as_dict(self) -> dict:
        return {
            "id": self.rule.id,
            "title": self.rule.title,
            "kind": self.rule.kind,
            "area": self.area,
            "state": self.state,
            "since": iso(self.since),
            "raised_at": iso(self.raised_at),
            "ended_at": iso(self.ended_at),
            "value": None if self.value is None else round(self.value, 2),
            "unit": UNITS[self.rule.kind],
            "summary": self.rule.describe_raise(self.value) if self.value is not None else "",
            "nodes": self.nodes,
            "readings": self.readings,
            "ends_when": self.rule.describe_end(),
            "raise_at": self.rule.raise_at,
            "clear_at": self.rule.clear_at,
            "clear_after_s": self.rule.clear_after_s,
            "window_s": self.rule.window_s,
            "topic": self.topic,
        }


def area_slug(area: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", area.lower().replace("'", "")).strip("-")
    return slug or "area"


def evaluate(rules: Rules, nodes: Sequence[NodeReadings], now: float) -> list[Alert]:
    """Every alert active at `now`, and every one that ended within the lookback."""
    by_area: dict[str, list[NodeReadings]] = {}
    for node in nodes:
        by_area.setdefault(rules.areas.area_of(node.node, node.lat, node.lon), []).append(node)
    start = now - rules.lookback_s
    steps = [start + i * rules.step_s for i in range(int((now - start) // rules.step_s) + 1)]
    if steps[-1] < now:
        steps.append(now)
    out = []
    for rule in rules.rules:
        for area, members in sorted(by_area.items()):
            metrics = [(m.node, _NodeMetric(rule, m, now)) for m in members]
            out.extend(_run(rule, area, metrics, steps, rules.topic_prefix))
    return out


def _run(rule: Rule, area: str, metrics: list, steps: list[float], prefix: str) -> list[Alert]:
    state = "idle"
    held_since = clear_since = None
    alert: Alert | None = None
    finished: list[Alert] = []
    for t in steps:
        values = []
        for node, metric in metrics:
            value, reading = metric.at(t)
            if value is not None:
                values.append((value, node, reading))
        if len(values) < rule.min_nodes:
            continue  # not enough known: the state holds
        values.sort(key=lambda v: -v[0])
        area_value = values[rule.min_nodes - 1][0]
        if state == "idle":
            if area_value >= rule.raise_at:
                held_since = held_since if held_since is not None else t
                if t - held_since >= rule.min_duration_s:
                    state = "active"
                    alert = Alert(rule, area, "active", held_since, t, None, area_value, [], [], "")
            else:
                held_since = None
        else:
            if area_value <= rule.clear_at:
                clear_since = clear_since if clear_since is not None else t
                if t - clear_since >= rule.clear_after_s:
                    alert.state, alert.ended_at = "ended", t
                    finished.append(alert)
                    state, alert, held_since, clear_since = "idle", None, None, None
                    continue
            else:
                clear_since = None
        if state == "active":
            behind = [v for v in values if v[0] >= rule.raise_at] or values[: rule.min_nodes]
            alert.value = area_value
            alert.nodes = sorted(v[1] for v in behind)
            alert.readings = [
                {"node": v[1], "at": iso(t), **v[2]} for v in sorted(behind, key=lambda v: v[1])
            ]
    if alert is not None:
        finished.append(alert)
    for item in finished:
        item.topic = f"{prefix}/{area_slug(area)}/{rule.id}"
    return finished


def active(alerts: Iterable[Alert]) -> list[Alert]:
    return [a for a in alerts if a.state == "active"]
