"""The log of committed ids: what the producers wrote, read back from their log files.

Each line is ``<id> <key> <seq> <unix time> ok|uncertain`` (see producer.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Commit:
    """One logged message."""

    id: str
    key: str
    seq: int
    at: float  # when the commit returned, Unix seconds


@dataclass
class CommitLog:
    """The ids whose commit returned (``ok``) and those whose commit raised (``uncertain``)."""

    ok: dict[str, Commit] = field(default_factory=dict)
    uncertain: dict[str, Commit] = field(default_factory=dict)

    def committed_by(self, moment: float) -> list[Commit]:
        """The commits that had returned by ``moment``."""
        return [c for c in self.ok.values() if c.at <= moment]

    def find(self, key: str, seq: int) -> Commit | None:
        """The committed message ``seq`` of ``key``, if any."""
        for commit in self.ok.values():
            if commit.key == key and commit.seq == seq:
                return commit
        return None


def load(paths: list[Path]) -> CommitLog:
    """Read the producers' log files."""
    log = CommitLog()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 5:
                continue  # a line cut by a killed producer
            commit = Commit(parts[0], parts[1], int(parts[2]), float(parts[3]))
            (log.ok if parts[4] == "ok" else log.uncertain)[commit.id] = commit
    return log
