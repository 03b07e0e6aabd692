"""``race-margins``: the race's margin per rung measured jointly on several calibration sweeps (`hydra/sweeper=race
hydra.sweeper.calibrate=true`, e.g. the demo with each of its seeds), written to <out>/race_margins.json for a race
to name (`hydra.sweeper.calibration=<out>`)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from analysis.race import calibrated_margins, calibration_record, diverged_variants, sweep_runs
from analysis.race_log import CALIBRATED, DecisionLog
from rfsweep.atomic import atomic_write

SHARED = ("rungs", "top", "keep", "audit", "bootstrap", "seed")


def race_margins_cmd(args) -> int:
    confs, steps = [], []
    for sweep in args.sweeps:
        path = Path(sweep) / "multirun.yaml"
        if not path.is_file() or not any("end" in r for r in DecisionLog(sweep).records()):
            raise ValueError(f"{sweep}: not a finished calibration race (allowed: a sweep run with hydra/sweeper=race "
                             f"hydra.sweeper.calibrate=true, ended)")
        cfg = yaml.safe_load(path.read_text())  # what the race sweeper saved of its composed config
        conf = {k: cfg["hydra"]["sweeper"][k] for k in (*SHARED, "calibrate")}
        if not conf["calibrate"]:
            raise ValueError(f"{sweep}: hydra.sweeper.calibrate=false: a race stops variants, so it cannot measure "
                             f"their margins (allowed: calibration sweeps)")
        confs.append(conf)
        steps.append([max(1, round(float(f) * int(cfg["trainer"]["max_steps"]))) for f in conf["rungs"]])
    first = confs[0]
    for sweep, conf, s in zip(args.sweeps[1:], confs[1:], steps[1:]):
        if any(conf[k] != first[k] for k in SHARED) or s != steps[0]:
            raise ValueError(f"{sweep}: its race values differ from {args.sweeps[0]}'s (allowed: calibrations of the "
                             f"same rungs, top, keep, audit, bootstrap, seed and trainer.max_steps)")
    gone = [diverged_variants(DecisionLog(s).records()) for s in args.sweeps]  # a diverged variant: no final place
    runs = [{v: r for v, r in sweep_runs(s).items() if v not in g} for s, g in zip(args.sweeps, gone)]
    measured = calibrated_margins([(Path(s), r) for s, r in zip(args.sweeps, runs)], steps[0], int(first["top"]),
                                  float(first["keep"]), int(first["audit"]), int(first["bootstrap"]),
                                  int(first["seed"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / CALIBRATED, "w") as f:
        json.dump(calibration_record(first["rungs"], first["top"], first["keep"], first["audit"], first["seed"],
                                     measured, [str(s) for s in args.sweeps], first["bootstrap"]), f)
    print(f"margins per rung (steps {steps[0]}): {measured}, measured on {len(args.sweeps)} calibration sweeps; "
          f"wrote {out / CALIBRATED} (a race: hydra.sweeper.calibration={out})")
    return 0
