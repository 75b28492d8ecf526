"""Missing seq ranges of one node, kept as readings arrive (pure: no database here).

A node's seq is contiguous across its sensors, so whatever lies between the lowest and the
highest seq stored and is not stored is missing: a gap. Seqs arriving above the highest open a
gap below them, seqs below the lowest (a backlog drained behind live readings) one above them,
and seqs inside a gap shrink it, split it, or close it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Gap:
    first: int
    last: int
    id: int | None = None  # the row it came from; None for a new one
    opened_at: str | None = None


@dataclass
class SeqRange:
    """What is stored of one node: first..last, less the open gaps (sorted, disjoint)."""

    first: int | None
    last: int | None
    gaps: list[Gap] = field(default_factory=list)

    def add(self, seqs: Iterable[int]) -> None:
        """Record newly stored seqs (none of them stored before)."""
        for seq in sorted(seqs):
            if self.first is None:
                self.first = self.last = seq
            elif seq > self.last:
                if seq > self.last + 1:
                    self.gaps.append(Gap(self.last + 1, seq - 1))
                self.last = seq
            elif seq < self.first:
                if seq < self.first - 1:
                    self.gaps.insert(0, Gap(seq + 1, self.first - 1))
                self.first = seq
            else:
                self._fill(seq)

    def _fill(self, seq: int) -> None:
        i = bisect_right([g.first for g in self.gaps], seq) - 1
        if i < 0 or not self.gaps[i].first <= seq <= self.gaps[i].last:
            raise ValueError(f"seq {seq} is neither new nor missing")  # the caller's bug
        gap = self.gaps[i]
        if gap.first == gap.last:
            del self.gaps[i]
        elif seq == gap.first:
            gap.first += 1
        elif seq == gap.last:
            gap.last -= 1
        else:  # split: the row keeps the lower part, a new one (same opening) takes the upper
            self.gaps.insert(i + 1, Gap(seq + 1, gap.last, None, gap.opened_at))
            gap.last = seq - 1

    def missing(self, seq: int) -> bool:
        i = bisect_right([g.first for g in self.gaps], seq) - 1
        return i >= 0 and self.gaps[i].first <= seq <= self.gaps[i].last
