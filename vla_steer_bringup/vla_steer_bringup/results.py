"""Each finished episode's results row, kept once under its key: what makes a study resumable and duplicate-free.

``out/results/<episode name>.json`` holds one episode's row (its key, the condition's concept and
strength, the bag, the metrics). It is written to a temporary file in the same folder, flushed to
disk and renamed over the final name, so a row is either whole or absent — a runner killed at
any moment leaves no half row — and writing a key again replaces it instead of adding one. The
merged table is one row per key of the study, in the study's order.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from vla_steer_bringup.study import Episode


class ResultStore:
    def __init__(self, out: Path):
        self.folder = Path(out) / "results"

    def path(self, episode: Episode) -> Path:
        return self.folder / f"{episode.name}.json"

    def get(self, episode: Episode) -> dict | None:
        path = self.path(episode)
        if not path.exists():
            return None
        row = json.loads(path.read_text())
        key = {"suite": episode.suite, "task_id": episode.task, "init_state": episode.init_state,
               "condition": episode.condition, "seed": episode.seed}
        if {k: row.get(k) for k in key} != key:
            raise ValueError(f"{path} holds another episode's row ({ {k: row.get(k) for k in key} })")
        return row

    def put(self, episode: Episode, row: dict) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(episode)
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{episode.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(row, stream, indent=1, sort_keys=True)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    def rows(self, episodes: Iterable[Episode]) -> list[dict]:
        """The finished episodes' rows, in ``episodes``' order (one per key)."""
        return [row for row in map(self.get, episodes) if row is not None]
