"""The sensor components: one folder each (`sensors/<driver>/`), declaring its driver, its config
options, the bus it claims, its simulator and faults, its detect probe, whether self-test
expects noise, and its sample-config table (see `sensors.component.Component`).

To add a sensor: copy a folder, and add its name to COMPONENTS. The config, the daemon,
detect, selftest, simulate and the sample config read this registry; nothing else names a
driver. A component's declaration is light; its driver and simulator are imported only when a
sensor of that driver is built.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .component import Component

COMPONENTS = (
    "bme280",
    "sds011",
    "rain_gauge",
    "anemometer",
    "pi_health",
    "pms5003",
    "sht4x",
    "dnms",
)


@cache
def components() -> dict[str, Component]:
    """Every component by its driver name, in registry order."""
    return {name: importlib.import_module(f"{__name__}.{name}").COMPONENT for name in COMPONENTS}


def component(driver: str) -> Component:
    return components()[driver]
