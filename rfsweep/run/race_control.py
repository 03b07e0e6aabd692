"""The race: a sweep that trains every job to the first rung, evaluates it there (`rfsweep.run.rung`), stops the
variants that cannot reach the top group (`analysis.race`), and continues the others from their checkpoints to the
next rung and to the end. Run by the Hydra sweeper `hydra/sweeper=race` (hydra_plugins/rfsweep_launcher), through
whatever launcher is configured (local workers, SLURM).

Deterministic and idempotent: each decided rung is a line of the sweep's decision log (race.jsonl, atomic appends);
a rerun of the same command replays the decided rungs from the log, relaunches only what is unfinished (a finished
rung or run is skipped by its job) and decides the next rung as the first launch would have.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from analysis.race_log import CALIBRATED, DecisionLog
from rfsweep import runfolder
from rfsweep.errors import ConfigError
from rfsweep.run.job import LAUNCH_ENV
from rfsweep.run.plan import nfe_per_run


@dataclass
class RaceConf:
    rungs: list  # fractions of trainer.max_steps where the race evaluates and decides (the end follows)
    top: int  # K: the top group's size
    margins: list | None  # m per rung; None: from `calibration`
    calibration: str | None  # a calibration sweep (its race_margins.json)
    calibrate: bool  # nothing stops: the sweep measures the margins
    keep: float  # the least fraction of a rung's variants that go on
    audit: int  # stopped variants carried to the end per rung
    bootstrap: int  # replicates of the rank intervals at a rung
    seed: int  # the bootstrap's and the audit draw's seed

    def check(self, max_steps: int) -> list[int]:
        """The rungs' steps; one line naming the key for a value out of range."""
        fr = [float(f) for f in self.rungs]
        if not fr or any(not 0 < f < 1 for f in fr) or fr != sorted(set(fr)):
            raise ConfigError(f"config error: hydra.sweeper.rungs={list(self.rungs)} (allowed: increasing fractions "
                              f"of trainer.max_steps in (0, 1), e.g. [0.25, 0.5])")
        steps = [max(1, round(f * max_steps)) for f in fr]
        if len(set(steps)) != len(steps):
            raise ConfigError(f"config error: hydra.sweeper.rungs={fr} give equal steps {steps} at trainer.max_steps="
                              f"{max_steps} (allowed: rungs at distinct steps)")
        if self.top < 1 or not 0 <= self.keep <= 1 or self.audit < 0 or self.bootstrap < 100:
            raise ConfigError(f"config error: hydra.sweeper top={self.top} keep={self.keep} audit={self.audit} "
                              f"bootstrap={self.bootstrap} (allowed: top >= 1, keep in [0, 1], audit >= 0, "
                              f"bootstrap >= 100)")
        if not self.calibrate and self.margins is None and not self.calibration:
            raise ConfigError("config error: hydra.sweeper.margins=null and hydra.sweeper.calibration=null (allowed: "
                              "a margin per rung, a calibration sweep's folder, or calibrate=true to measure them)")
        if self.margins is not None and (len(self.margins) != len(fr) or any(int(m) < 0 for m in self.margins)):
            raise ConfigError(f"config error: hydra.sweeper.margins={list(self.margins)} (allowed: one integer >= 0 "
                              f"per rung, {len(fr)})")
        return steps

    def margin_list(self, n: int) -> list[int]:
        if self.calibrate:
            return [0] * n
        if self.margins is not None:
            return [int(m) for m in self.margins]
        path = Path(self.calibration) / CALIBRATED
        try:
            measured = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise ConfigError(f"config error: hydra.sweeper.calibration={self.calibration}: no readable {CALIBRATED} "
                              f"(allowed: a sweep raced with hydra.sweeper.calibrate=true, finished)") from None
        ours = {"rungs": [float(f) for f in self.rungs], "top": self.top, "keep": self.keep, "audit": self.audit,
                "seed": self.seed, "bootstrap": self.bootstrap}
        theirs = {k: measured.get(k, v) for k, v in ours.items()}  # older files: rungs and top only
        theirs["rungs"] = [float(f) for f in theirs["rungs"]]
        if theirs != ours:
            raise ConfigError(f"config error: hydra.sweeper {' '.join(f'{k}={v}' for k, v in ours.items())} but the "
                              f"calibration measured {' '.join(f'{k}={v}' for k, v in theirs.items())} (allowed: "
                              f"the calibration's values)")
        return [int(m) for m in measured["margins"]]


@dataclass
class Job:
    overrides: list[str]
    variant: str
    run: str  # the run folder, relative to the sweep folder


def run_race(conf: RaceConf, sweep_dir: Path, max_steps: int, batch_size: int, jobs: list[Job], launch) -> int:
    """The race over `jobs`; `launch(list of override lists)` runs a batch of jobs through the configured launcher.
    Returns 0 when the race ended, 1 when a rung could not be decided (a job failed: rerun the same command)."""
    from analysis.race import (  # deferred: pandas
        Rule,
        calibration_record,
        compute_line,
        compute_report,
        decide,
        diverged,
        rung_places,
        rung_rows,
        spent,
    )

    steps = conf.check(max_steps)
    margin = conf.margin_list(len(steps))
    log = DecisionLog(sweep_dir)
    records = log.records()
    by_variant: dict[str, list[Job]] = {}
    for j in jobs:
        by_variant.setdefault(j.variant, []).append(j)
    runs = {v: [j.run for j in js] for v, js in by_variant.items()}  # each variant's run folders
    alive, audited, stopped = sorted(by_variant), set(), set()
    for i, step in enumerate(steps):
        rec = records[i] if i < len(records) and "rung" in records[i] else None
        rule = Rule(conf.top, margin[i], 1.0 if conf.calibrate else conf.keep, 0 if conf.calibrate else conf.audit)
        made = {"step": step, "alive": alive, "rule": vars(rule), "bootstrap": conf.bootstrap, "seed": conf.seed,
                "runs": {v: runs[v] for v in alive}}
        if rec is not None:
            _check_replay(log.path, i + 1, rec, made)
        if rec is None:
            gone = diverged(sweep_dir, made["runs"])  # a rerun does not train a diverged run again
            launch([[*j.overrides, f"rung.stop_at={step}"] for v in alive if v not in gone for j in by_variant[v]])
            gone = diverged(sweep_dir, made["runs"])
            rest = {v: r for v, r in made["runs"].items() if v not in gone}
            decision, places = {"go_on": [], "stopped": [], "audit": []}, {}  # every variant diverged: none to place
            if rest:
                try:
                    df, banks = rung_rows(sweep_dir, rest, step)
                except ValueError as e:
                    print(f"race: rung {i + 1} (step {step}) not decided: {e}; rerun the same command (finished "
                          f"rungs and runs are skipped)", file=sys.stderr, flush=True)
                    return 1
                at = rung_places(df, banks, conf.bootstrap, conf.seed)
                decision = decide(at, rule, conf.seed + i + 1, audited)
                places = {r.variant: [int(r.rank), int(r.rank_lo), int(r.rank_hi)] for r in at.itertuples()}
            rec = {"rung": i + 1, **made, **decision, "diverged": gone, "places": places}
            log.append(rec)
            records = log.records()
        out = rec.get("diverged", {})
        print(f"race: rung {i + 1} (step {step} of {max_steps}): {len(rec['alive'])} variants, {len(rec['stopped'])} "
              f"stopped ({len(rec['audit'])} carried on as an audit), margin {rec['rule']['margin']}"
              + (f"; {len(out)} diverged ({', '.join(out)})" if out else ""), flush=True)
        stopped |= (set(rec["stopped"]) - set(rec["audit"])) | set(out)
        audited |= set(rec["audit"])
        alive = sorted(set(rec["go_on"]) | set(rec["audit"]))
    end = next((r for r in records if "end" in r), None)
    late = end.get("diverged", {}) if end else diverged(sweep_dir, {v: runs[v] for v in alive})
    launch([list(j.overrides) for v in alive if v not in late for j in by_variant[v]])
    if end is None:  # diverged after the last rung: stopped at the end
        late = diverged(sweep_dir, {v: runs[v] for v in alive})
    alive = [v for v in alive if v not in late]
    stopped |= set(late)
    unfinished = [j.run for v in alive for j in by_variant[v]
                  if runfolder.read_status(sweep_dir / j.run).get("state") != runfolder.FINISHED]
    if unfinished:
        print(f"race: {len(unfinished)} runs did not finish (e.g. {unfinished[0]}); rerun the same command",
              file=sys.stderr, flush=True)
        return 1
    launch_id = os.environ.get(LAUNCH_ENV)
    out = {v: d for r in records for v, d in r.get("diverged", {}).items()} | late
    for v in sorted(stopped):
        why = f"stopped by the race: training diverged ({out[v]['reason']})" if v in out else "stopped by the race"
        for j in by_variant[v]:
            runfolder.write_outcome(sweep_dir / j.run, "stopped", why, launch=launch_id)
    if end is None:
        end = {"end": True, "finished": alive, "audit": sorted(audited), "stopped": sorted(stopped), "diverged": late,
               "spent": spent(sweep_dir, [j.run for j in jobs]), "jobs": len(jobs), "max_steps": max_steps}
        if conf.calibrate:
            end["margins"] = _measure(sweep_dir, conf, {v: r for v, r in runs.items() if v not in out},
                                      steps)  # a diverged variant has no final place
        log.append(end)
        if conf.calibrate:
            from rfsweep.atomic import atomic_write

            with atomic_write(sweep_dir / CALIBRATED, "w") as f:
                json.dump(calibration_record(conf.rungs, conf.top, conf.keep, conf.audit, conf.seed, end["margins"],
                                             [str(sweep_dir)], conf.bootstrap), f)
    end = next(r for r in log.records() if "end" in r)
    report = compute_report(sweep_dir, [j.run for j in jobs], max_steps, batch_size)
    carried = len(set(end["audit"]) & set(end["finished"]))
    print(f"race: ended: {len(end['finished'])} variants finished ({carried} of them audited stopped ones), "
          f"{len(end['stopped'])} stopped; {compute_line(report)}; `make rank-table RESULTS={sweep_dir}`: Table 1 "
          f"with the censored rows", flush=True)
    return 0


def _check_replay(path: Path, n: int, rec: dict, made: dict) -> None:
    """A decided rung of the log is replayed only for the race that decided it: the same step, variants, rule,
    bootstrap, seed and run folders (a race under the same name with another training seed has other run folders).
    One line naming the first value that differs; a log written before a key was recorded is not checked on it."""
    for key, ours in made.items():
        theirs = rec.get(key, ours)
        if key == "rule":  # only the keys both rules have (an older log lacks some, a newer one may have more)
            ours = {k: v for k, v in ours.items() if k in theirs}
            theirs = {k: v for k, v in theirs.items() if k in ours}
        if theirs == ours:
            continue
        if key == "runs":
            v = next(v for v in sorted({*theirs, *ours}) if theirs.get(v) != ours.get(v))
            theirs, ours = f"{v}: {theirs.get(v)}", f"{v}: {ours.get(v)}"
        if key == "rule":  # the rule's own key that differs: top, margin, keep or audit
            key = next(k for k in ours if theirs[k] != ours[k])
            theirs, ours = theirs[key], ours[key]
        raise ConfigError(f"config error: {path} holds rung {n} decided with {key}={theirs}, this race has "
                          f"{key}={ours} (allowed: the command, seeds and margins that wrote it; move the log aside "
                          f"to race afresh)")


def _measure(sweep_dir: Path, conf: RaceConf, runs: dict[str, list[str]], steps: list[int]) -> list[int]:
    """The margin per rung of this calibration sweep (`analysis.race.calibrated_margins`; several seeds' calibrations
    together: `python -m analysis race-margins`)."""
    from analysis.race import calibrated_margins  # deferred: pandas

    return calibrated_margins([(sweep_dir, runs)], steps, conf.top, conf.keep, conf.audit, conf.bootstrap, conf.seed)


def dry_run_plan(conf: RaceConf, max_steps: int, batch_size: int, rung_nfe: int, final_nfe: int, variants: int,
                 jobs: int) -> list[str]:
    """What a dry run of the race prints: its rungs, the most it can cost against the full grid, and, with a
    calibration sweep, the saving its decision log predicts for these rules."""
    from analysis.race import Rule, forward_equivalents, planned, replayed_stops  # deferred: pandas

    steps = conf.check(max_steps)
    per = jobs / max(variants, 1)
    full = planned(variants, per, [], max_steps, 0, final_nfe, [])
    most = planned(variants, per, steps, max_steps, rung_nfe, final_nfe, [0] * len(steps))

    def share(c: dict) -> str:
        return (f"{c['train_steps']} training steps ({c['train_steps'] / max(full['train_steps'], 1):.0%}), "
                f"{c['eval_nfe']} evaluation network evaluations ({c['eval_nfe'] / max(full['eval_nfe'], 1):.0%}); "
                f"together {forward_equivalents(c, batch_size) / max(forward_equivalents(full, batch_size), 1):.0%} "
                f"of the full grid")
    lines = [f"race: {variants} variants, {jobs} jobs; rungs at steps {steps} of {max_steps}, top {conf.top}, keep "
             f"{conf.keep}, audit {conf.audit}; the full grid: {full['train_steps']} training steps, "
             f"{full['eval_nfe']} evaluation network evaluations",
             f"race: nothing stopped (the most it costs): {share(most)}"]
    if conf.calibrate or (conf.margins is None and not conf.calibration):
        return lines
    margin = conf.margin_list(len(steps))
    reference = DecisionLog(conf.calibration).records() if conf.calibration else []
    if not any("rung" in r for r in reference):
        return [*lines, "race: no reference sweep (hydra.sweeper.calibration) to predict the saving from"]
    rules = [Rule(conf.top, m, conf.keep, conf.audit) for m in margin]
    stops = replayed_stops(reference, rules, conf.seed)
    expected = planned(variants, per, steps, max_steps, rung_nfe, final_nfe, stops)
    return [*lines, f"race: expected from {conf.calibration} (its rung places under margins {margin}: {stops} "
                    f"variants stopped per rung): {share(expected)}"]


def check_rung_evaluator(cfg) -> None:
    """A race evaluates every run at its rungs: a job of a race whose evaluator is none is refused in one line
    (ConfigError) before any job starts (its rung job would refuse it, and the race would never decide)."""
    if cfg.eval.evaluator == "none":
        raise ConfigError("config error: hydra/sweeper=race with eval.evaluator=none (allowed: an evaluator, embedded "
                          "or openclip: the race evaluates every run at its rungs; e.g. eval=embedded)")


RACE_KEYS = ("rungs", "top", "margins", "calibration", "calibrate", "keep", "audit", "bootstrap", "seed")


def race_conf(sweeper) -> RaceConf:
    """The RaceConf of a `hydra.sweeper` node (conf/hydra/sweeper/race.yaml) or of the sweeper's keyword arguments."""
    get = sweeper.get
    margins = get("margins")
    return RaceConf(rungs=[float(f) for f in get("rungs")], top=int(get("top")),
                    margins=None if margins is None else [int(m) for m in margins], calibration=get("calibration"),
                    calibrate=bool(get("calibrate")), keep=float(get("keep")), audit=int(get("audit")),
                    bootstrap=int(get("bootstrap")), seed=int(get("seed")))


def print_dry_run_plan(conf: RaceConf, cfg, jobs: list[list[str]]) -> int:
    """A race's dry run after its jobs' lines (`dry_run_plan` for the sweep's config `cfg` and its jobs' overrides);
    0, or 2 after a one-line error for a bad race value."""
    from rfsweep.errors import UserError

    variants = {o for job in jobs for o in job if o.startswith("formulation.variant=")}
    final = nfe_per_run(cfg.eval.n_samples, cfg.eval.settings, cfg.eval.weights) if cfg.eval.enabled else 0
    try:
        lines = dry_run_plan(conf, int(cfg.trainer.max_steps), int(cfg.trainer.batch_size),
                             nfe_per_run(cfg.rung.samples, cfg.rung.settings, cfg.rung.weights), final,
                             max(len(variants), 1), len(jobs))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    for line in lines:
        print(line, flush=True)
    return 0
