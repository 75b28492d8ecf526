"""Checks and the PASS/FAIL report that every provisioning step produces (DESIGN §6)."""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_node import __version__


@dataclass
class Check:
    name: str
    result: str  # "PASS" | "FAIL"
    detail: str
    measured: object = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.result == "PASS"

    def as_json(self) -> dict:
        out = asdict(self)
        if out["measured"] is None:
            del out["measured"]
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class Report:
    node: str
    config_hash: str
    checks: list[Check] = field(default_factory=list)
    node_key: str = ""  # the node's public key for secrets sent to it (x25519:...), once written
    show: Callable[[str], None] | None = None  # progress, one line per check as it completes

    @property
    def result(self) -> str:
        return "PASS" if self.checks and all(c.passed for c in self.checks) else "FAIL"

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        if self.show is not None:
            self.show(format_check(check))
        return check

    @contextmanager
    def step(self, name: str) -> Iterator[dict]:
        """Time a check: the body fills `outcome` (detail, measured, and passed or not)."""
        outcome: dict = {"passed": False, "detail": "", "measured": None}
        started = time.monotonic()
        try:
            yield outcome
        except Exception as err:  # a step that blew up is a FAIL with its reason, never a traceback
            outcome.update(passed=False, detail=f"{type(err).__name__}: {err}")
        self.add(
            Check(
                name,
                "PASS" if outcome["passed"] else "FAIL",
                outcome["detail"],
                outcome["measured"],
                time.monotonic() - started,
            )
        )

    def as_json(self) -> dict:
        return {
            "node": self.node,
            "version": __version__,
            "config_hash": self.config_hash,
            **({"node_key": self.node_key} if self.node_key else {}),
            "result": self.result,
            "checks": [c.as_json() for c in self.checks],
        }

    def write(self, path: str | Path) -> None:
        """The JSON report, never through a symlink: provision runs as root and `--report` often
        names a shared directory such as /tmp, where anyone can plant a link to /etc/shadow."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise OSError(
                    errno.ELOOP, f"{path} is a symlink: the report is not written through it"
                ) from None
            raise
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(json.dumps(self.as_json(), indent=2) + "\n")

    def summary(self) -> str:
        failed = [c.name for c in self.checks if not c.passed]
        if not failed:
            return f"PASS: node {self.node}, {len(self.checks)} checks passed"
        return (
            f"FAIL: node {self.node}, {len(failed)} of {len(self.checks)} checks failed: {', '.join(failed)}"
        )


def format_check(check: Check) -> str:
    return f"[{check.result}] {check.name}: {check.detail} ({check.seconds:.1f} s)"
