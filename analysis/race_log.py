"""A race's decision log (written by `rfsweep.run.race_control`, read by `analysis.race` and `analysis.collect`):
<sweep>/race.jsonl, one JSON line per decided rung, then one for the end; and the name of the margins a calibration
writes (<sweep>/race_margins.json, by the calibration race itself or `analysis race-margins`)."""

from __future__ import annotations

import json
from pathlib import Path

from rfsweep.atomic import atomic_write

LOG = "race.jsonl"
CALIBRATED = "race_margins.json"  # what a race's hydra.sweeper.calibration names (analysis.race.calibration_record)


class DecisionLog:
    """The race's append-only decision log (<sweep>/race.jsonl): one line per decided rung, written atomically (the
    whole file replaced by itself plus the line), never rewritten; a rerun of the race reads it and replays the rungs
    it holds instead of deciding them again."""

    def __init__(self, sweep_dir: str | Path):
        self.path = Path(sweep_dir) / LOG

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{self.path}: line {n} is not JSON (allowed: the race's own log; move it aside to "
                                 f"start the race afresh)") from None
        return out

    def append(self, record: dict) -> None:
        text = self.path.read_text() if self.path.is_file() else ""
        with atomic_write(self.path, "w") as f:
            f.write(text + json.dumps(record, sort_keys=True) + "\n")
