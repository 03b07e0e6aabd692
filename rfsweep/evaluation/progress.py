"""What evaluation prints while it runs: a line as each sampler setting starts and as it ends, with the time spent
and an estimate of the time left. Settings differ in cost by their network evaluations (steps, twice with
classifier-free guidance), so the estimate spreads the measured time per evaluation over what remains."""

from __future__ import annotations

import time
from collections.abc import Callable


def evaluations(steps: int, guidance: float) -> int:
    """Network evaluations per sample of one setting: one per step, two with guidance (cfg != 1)."""
    return int(steps) * (1 if abs(float(guidance) - 1.0) < 1e-9 else 2)


def duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class EvalProgress:
    """`start(weights, steps, cfg)` before a setting, `finish()` after it; each prints one line (`out`)."""

    def __init__(self, todo: list[tuple[str, int, float]], out: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic):
        self.todo, self.out, self.clock = list(todo), out, clock
        self.total = sum(evaluations(s, c) for _, s, c in self.todo)
        self.k, self.done_units, self.spent, self.began, self.current = 0, 0, 0.0, None, None

    def _name(self, weights: str, steps: int, cfg: float) -> str:
        return f"eval {self.k}/{len(self.todo)} {weights} {int(steps)} steps cfg {float(cfg):g}"

    def eta(self) -> str:
        if not self.done_units:
            return "ETA after the first setting"
        left = (self.total - self.done_units) * self.spent / self.done_units
        return f"ETA {duration(left)}"

    def start(self, weights: str, steps: int, cfg: float) -> None:
        self.k += 1
        self.current, self.began = (weights, steps, cfg), self.clock()
        self.out(f"{self._name(weights, steps, cfg)}: sampling ({self.eta()})")

    def finish(self) -> None:
        weights, steps, cfg = self.current
        took = self.clock() - self.began
        self.spent += took
        self.done_units += evaluations(steps, cfg)
        left = len(self.todo) - self.k
        tail = f"{self.eta()} for {left} more" if left else "all settings done"
        self.out(f"{self._name(weights, steps, cfg)}: done in {duration(took)} ({tail})")
