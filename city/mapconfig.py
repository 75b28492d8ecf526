"""`edge-node serve`'s options for the map, kept apart from the web code so that building the
command line imports no web framework."""

from __future__ import annotations

import argparse
import threading

from . import alerts as alert_rules

ALERTS_CACHE_S = 60.0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tiles",
        metavar="URL",
        help="XYZ tile URL for the map ({z}/{x}/{y}); without it the map draws Terrassa's streets alone",
    )
    parser.add_argument("--tiles-attribution", metavar="TEXT", default="", help="the tiles' credit line")
    parser.add_argument("--alerts", metavar="FILE", help="the city's alert rules (TOML), shown on the map")


def serve_options(args: argparse.Namespace) -> dict:
    """The map's options from `edge-node serve`'s arguments; a bad rules file raises RulesError."""
    tiles = getattr(args, "tiles", None)
    if tiles is not None and not (tiles.startswith(("http://", "https://", "/")) and "{z}" in tiles):
        raise alert_rules.RulesError(
            f"--tiles: must be an http(s) URL or a path with {{z}}/{{x}}/{{y}} (got {tiles!r})"
        )
    rules = alert_rules.load_rules(args.alerts) if getattr(args, "alerts", None) else None
    return {
        "tiles": {"url": tiles, "attribution": getattr(args, "tiles_attribution", "")} if tiles else None,
        "rules": rules,
        "alerts_cache": _AlertsCache(),
        "map_cache": _map_cache(),
    }


def _map_cache():
    from .webmap import MapCache

    return MapCache()


class _AlertsCache:
    """Evaluating the rules reads hours of readings: once a minute is enough for a map."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at = 0.0
        self.value: list = []

    def get(self, db, conn, rules, now: float) -> list:
        from .webmap import evaluate_stored

        with self.lock:
            if now - self.at >= ALERTS_CACHE_S or now < self.at:
                self.value = [a.as_dict() for a in evaluate_stored(db, conn, rules, now)]
                self.at = now
            return self.value
