"""`make demo-fleet`: 50 simulated nodes (one with a faulty sensor, two in a dead zone) against a
local Mosquitto, with the operator's live fleet view in front. The nodes trust a demo operator
key, and the fleet view knows their inventory, so the two that never reach the broker are listed
as "never seen". Ctrl-C stops everything."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .mosquitto import LocalBroker

NODES = 50


def main() -> int:
    with LocalBroker() as broker, tempfile.TemporaryDirectory(prefix="edge-node-demo-fleet-") as tmp:
        key, inventory = Path(tmp) / "ops.key", Path(tmp) / "inventory.csv"
        public = subprocess.run(
            [sys.executable, "-m", "edge_node", "keygen", "--out", str(key)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
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
                "--workdir",
                str(Path(tmp) / "nodes"),
                "--trusted-key",
                public,
                "--confirm",
                "30",
                "--inventory-out",
                str(inventory),
            ],
        )
        print(
            "change them in stages from another terminal:\n"
            f"  edge-node remote --broker {broker.url} --key {key} --nodes 'sim-*' \\\n"
            f"      --inventory {inventory} --stages 1,10%,100% --soak 20 set sensors.bme280.interval_s=10",
            file=sys.stderr,
        )
        try:
            while not inventory.exists() and fleet.poll() is None:  # written before the nodes start
                time.sleep(0.1)
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
                    "--inventory",
                    str(inventory),
                ]
            )
        except KeyboardInterrupt:
            return 0
        finally:
            fleet.terminate()
            fleet.wait(30)


if __name__ == "__main__":
    sys.exit(main())
