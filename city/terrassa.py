"""Terrassa's streets, for placing simulated nodes where real ones would stand, and its areas.

Each street is its real name and an approximate axis (two or three points, decimal degrees,
WGS84) traced by hand from public maps of the city; a simulated node is put at an even step
along one of them, street after street, so that a simulated city covers the town. `AREAS` are
the neighbourhoods the streets run through, each with a centre point: the map's "worst areas"
and the alerts' areas fall back to the nearest of these for a node the city's file does not
place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CITY = "Terrassa"
CENTRE = (41.5636, 2.0111)  # Plaça Vella


@dataclass(frozen=True)
class Street:
    name: str
    area: str
    axis: tuple[tuple[float, float], ...]


STREETS: tuple[Street, ...] = (
    Street("Rambla d'Ègara", "Centre", ((41.5605, 2.0092), (41.5643, 2.0088), (41.5680, 2.0082))),
    Street("Passeig del Vint-i-dos de Juliol", "Vallparadís", ((41.5570, 2.0150), (41.5645, 2.0200))),
    Street("Avinguda de Jacquard", "Centre", ((41.5575, 2.0095), (41.5605, 2.0180))),
    Street("Avinguda de l'Abat Marcet", "Ca n'Aurell", ((41.5655, 1.9985), (41.5745, 2.0015))),
    Street("Carretera de Montcada", "Les Arenes", ((41.5575, 2.0230), (41.5540, 2.0330))),
    Street("Avinguda de Barcelona", "Can Palet", ((41.5560, 2.0170), (41.5500, 2.0230))),
    Street("Avinguda de Santa Eulàlia", "La Maurina", ((41.5560, 2.0020), (41.5500, 2.0000))),
    Street("Carretera de Castellar", "Sant Pere Nord", ((41.5700, 2.0150), (41.5800, 2.0200))),
    Street("Carretera de Matadepera", "Sant Pere Nord", ((41.5700, 2.0090), (41.5820, 2.0110))),
    Street("Avinguda de Béjar", "Ca n'Aurell", ((41.5630, 1.9995), (41.5580, 2.0040))),
    Street("Carretera de Rubí", "La Maurina", ((41.5560, 2.0070), (41.5450, 2.0100))),
    Street("Avinguda del Vallès", "Les Arenes", ((41.5680, 2.0230), (41.5720, 2.0310))),
    Street("Carretera de Martorell", "Ca n'Aurell", ((41.5630, 1.9980), (41.5600, 1.9880))),
    Street("Carrer Major", "Centre", ((41.5640, 2.0095), (41.5655, 2.0125))),
)


def _area_centres() -> dict[str, tuple[float, float]]:
    points: dict[str, list[tuple[float, float]]] = {}
    for street in STREETS:
        points.setdefault(street.area, []).extend(street.axis)
    return {
        area: (sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))
        for area, pts in sorted(points.items())
    }


AREAS: dict[str, tuple[float, float]] = _area_centres()


def _along(axis: tuple[tuple[float, float], ...], fraction: float) -> tuple[float, float]:
    """The point at `fraction` (0..1) of the axis's length."""
    legs = [math.dist(a, b) for a, b in zip(axis, axis[1:], strict=False)]
    target = fraction * sum(legs)
    for (a, b), leg in zip(zip(axis, axis[1:], strict=False), legs, strict=False):
        if target <= leg or leg == 0:
            t = 0.0 if leg == 0 else target / leg
            return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)
        target -= leg
    return axis[-1]


def _van_der_corput(k: int) -> float:
    """0.5, 0.25, 0.75, 0.125, 0.375, ...: each new point halves the largest gap left."""
    fraction, denominator = 0.0, 1.0
    while k:
        denominator *= 2
        k, bit = divmod(k, 2)
        fraction += bit / denominator
    return fraction


def placement(index: int) -> tuple[float, float, str]:
    """Where simulated node `index` (from 0) stands: (lat, lon, site).

    Nodes go round the streets (node 0 on the first street, node 1 on the second, ...); on each
    street the n-th node halves the largest gap its street's earlier nodes left. A node's spot
    depends on its index alone, so two fleets side by side (`simulate --street-offset`) never
    share one, and any fleet size covers the whole town.
    """
    street = STREETS[index % len(STREETS)]
    position = index // len(STREETS)
    lat, lon = _along(street.axis, _van_der_corput(position + 1))
    number = 2 + 2 * (position * 7 % 60)
    return round(lat, 6), round(lon, 6), f"{street.name} {number}, {street.area}"


def nearest_area(lat: float, lon: float) -> str:
    return min(AREAS, key=lambda area: math.dist(AREAS[area], (lat, lon)))
