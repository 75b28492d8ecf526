"""`make demo-fleet`: 50 simulated nodes (one with a faulty sensor, a few in a dead zone) against a
local Mosquitto, with the operator's live fleet view in front. Ctrl-C stops everything."""

from __future__ import annotations

import subprocess
import sys

from .mosquitto import LocalBroker

NODES = 50


def main() -> int:
    with LocalBroker() as broker:
        print(f"mosquitto on {broker.url}; starting {NODES} simulated nodes", file=sys.stderr)
        fleet = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_node",
                "simulate",
                "--nodes",
                str(NODES),
                "--broker",
                broker.url,
                "--interval",
                "5",
                "--heartbeat",
                "10",
                "--fault",
                "sim-007:bme280=nack",
                "--offline",
                "4%",
                "--report-every",
                "0",
            ],
        )
        try:
            return subprocess.call(
                [
                    sys.executable,
                    "-m",
                    "edge_node",
                    "fleet",
                    "--broker",
                    broker.url,
                    "--watch",
                    "--offline-after",
                    "30",
                ]
            )
        except KeyboardInterrupt:
            return 0
        finally:
            fleet.terminate()
            fleet.wait(30)


if __name__ == "__main__":
    sys.exit(main())
