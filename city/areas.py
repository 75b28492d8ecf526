"""Which area of the city a node belongs to: the city's own list first, Terrassa's map after.

The city's alert file (`city.alerts`) may list areas as node-id patterns and/or a box:
    [areas."Centre"]
    nodes = ["trs-00*", "trs-0101"]
    box = [41.560, 2.005, 41.568, 2.013]   # south, west, north, east
A node neither names is put in the nearest of Terrassa's neighbourhoods (`city.terrassa.AREAS`)
when its location is known, else in "unplaced".
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import terrassa

UNPLACED = "unplaced"


@dataclass(frozen=True)
class Area:
    name: str
    nodes: tuple[str, ...] = ()
    box: tuple[float, float, float, float] | None = None

    def holds(self, node: str, lat: float | None, lon: float | None) -> bool:
        if any(fnmatch.fnmatchcase(node, pattern) for pattern in self.nodes):
            return True
        if self.box is None or lat is None or lon is None:
            return False
        south, west, north, east = self.box
        return south <= lat <= north and west <= lon <= east


@dataclass
class Areas:
    listed: tuple[Area, ...] = ()
    _cache: dict = field(default_factory=dict, repr=False)

    def area_of(self, node: str, lat: float | None, lon: float | None) -> str:
        key = (node, lat, lon)
        if key not in self._cache:
            self._cache[key] = self._find(node, lat, lon)
        return self._cache[key]

    def _find(self, node: str, lat: float | None, lon: float | None) -> str:
        for area in self.listed:
            if area.holds(node, lat, lon):
                return area.name
        if lat is None or lon is None:
            return UNPLACED
        return terrassa.nearest_area(lat, lon)


class AreaError(ValueError):
    pass


def parse_areas(table: Mapping, where: str) -> Areas:
    """`[areas.NAME]` tables of the city's file; errors name `where` and the key."""
    if not isinstance(table, Mapping):
        raise AreaError(f"{where}: must be a table of areas")
    listed = []
    for name, spec in table.items():
        key = f"{where}.{name}"
        if not isinstance(spec, Mapping):
            raise AreaError(f"{key}: must be a table with nodes and/or box")
        unknown = set(spec) - {"nodes", "box"}
        if unknown:
            raise AreaError(f"{key}.{sorted(unknown)[0]}: unknown key (expected nodes, box)")
        nodes = spec.get("nodes", [])
        if not isinstance(nodes, list) or not all(isinstance(n, str) and n for n in nodes):
            raise AreaError(f"{key}.nodes: must be a list of node ids or patterns")
        box = spec.get("box")
        if box is not None:
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
                raise AreaError(f"{key}.box: must be [south, west, north, east] in degrees")
            if not (box[0] <= box[2] and box[1] <= box[3]):
                raise AreaError(f"{key}.box: south must be <= north and west <= east (got {box})")
            box = tuple(float(v) for v in box)
        if not nodes and box is None:
            raise AreaError(f"{key}: needs nodes or box")
        listed.append(Area(name, tuple(nodes), box))
    return Areas(tuple(listed))
