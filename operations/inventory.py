"""The city's inventory: the nodes that should exist, so that the fleet view, `edge-node remote`
and a rollout's report can name those that never reported, or stopped, instead of leaving them
out (issue 13 point 8).

Two sources, either or both (`--inventory FILE`, repeatable):
- a CSV the operator keeps, with a header line and the columns `node,site,lat,lon` (site and the
  coordinates may be empty; other columns are ignored), one node a line;
- provisioning reports (`edge-node provision --report FILE`, JSON): each names its node and
  its `node_key` (what `remote rotate-password` seals the new password to, rather than to
  whatever key an answer on the broker claims); a report only counts when its result is PASS.

`edge-node simulate --inventory-out FILE` writes the CSV of the fleet it simulates.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from edge_node.config import NODE_ID_PATTERN

MAX_NODES = 100_000
_NODE_ID = re.compile(NODE_ID_PATTERN)


class InventoryError(ValueError):
    """One line: the file, where in it, what is wrong."""


@dataclass(frozen=True)
class InventoryNode:
    node: str
    site: str = ""
    lat: float | None = None
    lon: float | None = None
    node_key: str | None = None  # "x25519:...", from a provisioning report

    @property
    def where(self) -> str:
        place = self.site or "no site recorded"
        if self.lat is not None and self.lon is not None:
            place += f" ({self.lat:.5f}, {self.lon:.5f})"
        return place


def load_inventory(paths: list[str | Path]) -> dict[str, InventoryNode]:
    nodes: dict[str, InventoryNode] = {}
    for path in paths:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InventoryError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") from None
        found = _report(path, text) if path.suffix == ".json" else _csv(path, text)
        for item in found:
            nodes[item.node] = item
            if len(nodes) > MAX_NODES:
                raise InventoryError(f"{path}: more than {MAX_NODES} nodes")
    return nodes


def _node_id(path: Path, where: str, value) -> str:
    if not isinstance(value, str) or not _NODE_ID.fullmatch(value):
        raise InventoryError(f"{path}: {where}: node must match {NODE_ID_PATTERN} (got {str(value)[:40]!r})")
    return value


def _coordinate(path: Path, where: str, value: str, limit: float) -> float | None:
    if not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or abs(number) > limit:
        raise InventoryError(f"{path}: {where}: must be a number within ±{limit:g} (got {value[:40]!r})")
    return number


def _csv(path: Path, text: str) -> list[InventoryNode]:
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "node" not in reader.fieldnames:
        raise InventoryError(f"{path}: line 1: needs a header with a node column (node,site,lat,lon)")
    out = []
    for line, row in enumerate(reader, 2):
        where = f"line {line}"
        node = _node_id(path, where, (row.get("node") or "").strip())
        site = " ".join((row.get("site") or "").split())[:120]
        lat = _coordinate(path, f"{where}: lat", row.get("lat") or "", 90)
        lon = _coordinate(path, f"{where}: lon", row.get("lon") or "", 180)
        out.append(InventoryNode(node, "".join(c for c in site if c.isprintable()), lat, lon))
    return out


def _report(path: Path, text: str) -> list[InventoryNode]:
    try:
        report = json.loads(text)
    except ValueError as err:
        raise InventoryError(f"{path}: not a provisioning report: {err}") from None
    if not isinstance(report, dict):
        raise InventoryError(f"{path}: not a provisioning report (a JSON object)")
    if report.get("result") != "PASS":
        return []
    node_key = report.get("node_key")
    if node_key is not None and not _is_node_key(node_key):
        raise InventoryError(
            f"{path}: node_key: must be x25519:BASE64 of 32 bytes (got {str(node_key)[:60]!r})"
        )
    return [InventoryNode(_node_id(path, "node", report.get("node")), node_key=node_key)]


def _is_node_key(value) -> bool:
    if not isinstance(value, str) or not value.startswith("x25519:"):
        return False
    try:
        return len(base64.b64decode(value[len("x25519:") :], validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def write_inventory(path: str | Path, nodes: list[InventoryNode]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["node", "site", "lat", "lon"])
        for n in nodes:
            writer.writerow([n.node, n.site, "" if n.lat is None else n.lat, "" if n.lon is None else n.lon])


def place_rows(
    rows: list[dict], inventory: dict[str, InventoryNode], heard: set[str], offline_after_s: float
):
    """The fleet view's rows (operations.fleet), told what the inventory knows: each row gains
    `site`; a node offline past `offline_after_s` is `missing`; a node never heard gets a row of
    its own, `never seen`, with where it is."""
    template = rows[0] if rows else None
    for row in rows:
        item = inventory.get(row["node"])
        row["site"] = item.where if item else None
        gone = row["last_seen_age_s"] is None or row["last_seen_age_s"] > offline_after_s
        if item and row["state"] in ("offline", "unknown") and gone:
            row["state"] = "missing"
            row["needs_visit"] = [f"missing at {item.where}", *row["needs_visit"]]
    for node, item in inventory.items():
        if node in heard:
            continue
        row = dict.fromkeys(template or NEVER_SEEN_KEYS)
        row.update(
            node=node,
            state="never seen",
            site=item.where,
            seq_gaps=0,
            seqs_seen=0,
            sensor_faults={},
            stale_sensors=[],
            sensors={},
            sensors_over_cap=0,
            under_voltage=False,
            malformed=0,
            needs_visit=[f"never seen: provisioned at {item.where}, has not reported"],
        )
        rows.append(row)


NEVER_SEEN_KEYS = (  # the fleet view's row keys (operations.fleet.Fleet._row), for a fleet of none heard
    "node", "state", "reason", "last_seen", "last_seen_age_s", "backlog", "oldest_unsent_age_s", "dropped",
    "seq_gaps", "seqs_seen", "sensor_faults", "stale_sensors", "sensors", "sensors_over_cap", "cpu_temp_c",
    "throttled", "under_voltage", "disk_free_mb", "clock_synced", "uptime_s", "version", "malformed",
    "needs_visit", "site",
)  # fmt: skip
