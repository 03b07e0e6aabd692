"""Evaluation says which setting runs, the time each took and an estimate of the time left (by network
evaluations: steps, twice with guidance)."""

from rfsweep.evaluation.progress import EvalProgress, duration, evaluations


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_and_eta_from_network_evaluations():
    lines, clock = [], Clock()
    todo = [("ema", 10, 1.0), ("ema", 10, 5.0), ("raw", 20, 5.0)]  # 10, 20 and 40 evaluations per sample
    p = EvalProgress(todo, out=lines.append, clock=clock)
    p.start("ema", 10, 1.0)
    clock.now += 5.0  # 0.5 s per evaluation
    p.finish()
    p.start("ema", 10, 5.0)
    clock.now += 10.0
    p.finish()
    p.start("raw", 20, 5.0)
    clock.now += 20.0
    p.finish()
    assert lines == [
        "eval 1/3 ema 10 steps cfg 1: sampling (ETA after the first setting)",
        "eval 1/3 ema 10 steps cfg 1: done in 5 s (ETA 30 s for 2 more)",  # 60 evaluations left x 0.5 s
        "eval 2/3 ema 10 steps cfg 5: sampling (ETA 30 s)",
        "eval 2/3 ema 10 steps cfg 5: done in 10 s (ETA 20 s for 1 more)",
        "eval 3/3 raw 20 steps cfg 5: sampling (ETA 20 s)",
        "eval 3/3 raw 20 steps cfg 5: done in 20 s (all settings done)",
    ]


def test_units_and_durations():
    assert evaluations(25, 1.0) == 25 and evaluations(25, 5.0) == 50
    assert duration(59.4) == "59 s" and duration(125) == "2 min 05 s" and duration(7322) == "2 h 02 min"
