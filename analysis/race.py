"""A raced sweep (`hydra/sweeper=race`, `rfsweep.run.race_control`) read back: each rung's evaluations and their
places with intervals, the stopping rule, the margin measured on a calibration sweep, the compute spent and the
censored rows of Table 1 (the decision log: `analysis.race_log`).

The rule at a rung: a variant stops when even its best plausible place (the lower end of its marginal 95% interval,
`Confidence.places`) lies beyond the top group's size K plus the margin m of that rung, the largest shift by which a
variant of the final top K sat beyond K at that rung of a calibration sweep (the same grid raced with nothing
stopped); at least `keep` of the rung's variants go on (the best placed), and `audit` of the stopped ones, drawn
with the race's seed, are carried to the end to check the rule. A variant with a run whose training diverged (a
non-finite loss, which a rerun repeats from the same checkpoint) cannot be ranked: it stops at the rung it diverged
before (or at the end), recorded as diverged, instead of holding the race up.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rfsweep.results import REAL, RESULTS_FILE, read_results
from rfsweep.runfolder import RUNGS, read_status

DIVERGED = "NonFiniteLossError"  # how a run's status.json names a non-finite training loss (rfsweep.train)


@dataclass(frozen=True)
class Rule:
    top: int  # K: the size of the top group the race keeps
    margin: int  # m: places beyond K a variant's best plausible place may lie at this rung
    keep: float  # the least fraction of the rung's variants that go on
    audit: int  # stopped variants carried to the end as a check of the rule


def diverged(sweep_dir: str | Path, runs: dict[str, list[str]]) -> dict[str, dict]:
    """The variants of `runs` (variant -> run folders) with a run whose training diverged: its status says failed
    with a non-finite loss, during training. variant -> {"run", "step", "reason"} of its first such run."""
    out = {}
    for variant, folders in sorted(runs.items()):
        for run in folders:
            status = read_status(Path(sweep_dir) / run)
            if (status.get("state") == "failed" and str(status.get("reason", "")).startswith(DIVERGED)
                    and status.get("stage") != "evaluation"):
                out[variant] = {"run": run, "step": status.get("step"), "reason": status["reason"]}
                break
    return out


def diverged_variants(records: list[dict]) -> set[str]:
    """Every variant a decision log records as diverged (at a rung or at the end)."""
    return {v for r in records for v in r.get("diverged", {})}


def rung_rows(sweep_dir: str | Path, runs: dict[str, list[str]], step: int):
    """The rung's results rows of the variants `runs` names (variant -> run folders, relative to the sweep) and their
    evidence banks, keyed by the rung folder (each row's run_dir). Raises ValueError naming a run whose rung results
    are missing or damaged."""
    from rfsweep.evaluation.bank import BANK_FILE, EvidenceBank  # deferred: torch
    frames, banks = [], {}
    for _, folders in sorted(runs.items()):
        for run in folders:
            where = Path(sweep_dir) / run / RUNGS / str(int(step))
            try:
                df = read_results(where / RESULTS_FILE)
                bank = EvidenceBank.load(where / BANK_FILE)
            except (OSError, ValueError) as e:
                raise ValueError(f"race: {run} has no complete evaluation at step {step} ({e})") from None
            if bank is None:
                raise ValueError(f"race: {run} has no evidence bank at step {step} ({where})")
            frames.append(df.assign(run_dir=str(where)))
            banks[str(where)] = bank
    return pd.concat(frames, ignore_index=True), banks


def rung_places(df: pd.DataFrame, banks: dict, b: int, seed: int) -> pd.DataFrame:
    """Each variant's place over the rung's settings and data sets (column `all`) with its marginal 95% interval:
    variant, rank, rank_lo, rank_hi, sorted by place."""
    from analysis.confidence import bootstrap  # deferred: scipy

    conf = bootstrap(df, banks, b=b, seed=seed)
    return conf.places("all")[["variant", "rank", "rank_lo", "rank_hi"]]


def decide(places: pd.DataFrame, rule: Rule, seed: int, carried=()) -> dict:
    """Who stops at this rung: {"go_on": [...], "stopped": [...], "audit": [...]} (variant names, sorted), by the
    rule of the module docstring; `carried`: variants audited at an earlier rung, which go on to the end whatever
    their place. Deterministic in `places`, `seed` and `carried`."""
    ordered = places.sort_values(["rank", "variant"])
    least = max(rule.top, math.ceil(rule.keep * len(ordered)))
    out = ordered["rank_lo"] > rule.top + rule.margin
    out.iloc[:least] = False
    out &= ~ordered["variant"].isin(set(carried))
    stopped = sorted(ordered.loc[out, "variant"])
    rng = np.random.default_rng(seed)
    audit = sorted(rng.choice(stopped, size=min(rule.audit, len(stopped)), replace=False).tolist()) if stopped else []
    return {"go_on": sorted(ordered.loc[~out, "variant"]), "stopped": stopped, "audit": audit}


def margins(calibration: pd.DataFrame, final: pd.DataFrame, top: int) -> int:
    """The rank shift m of one rung measured on a calibration sweep: the most places by which the best plausible
    place at the rung (`calibration`'s rank_lo) of a variant of the final top `top` (`final`'s rank) lay beyond
    `top`; 0 when every final top variant was already plausible there."""
    best = set(final.loc[final["rank"] <= top, "variant"])
    lo = calibration.set_index("variant")["rank_lo"]
    return int(max([0, *(int(lo[v]) - top for v in best if v in lo.index)]))


def evaluation_nfe(df: pd.DataFrame) -> int:
    """Network evaluations of results rows: samples x sampling steps, twice where guidance needs the unconditional
    prediction (cfg != 1)."""
    rows = df[df["weights"] != REAL]
    per = rows["steps"].astype(int) * np.where((rows["cfg"] - 1.0).abs() > 1e-9, 2, 1)
    return int((rows["n_samples"].astype(int) * per).sum())


def spent(sweep_dir: str | Path, runs: list[str]) -> dict:
    """The compute the sweep's run folders hold: training steps (each run's last complete checkpoint; a run whose
    checkpoints are all damaged is a CheckpointError naming them) and the network evaluations of every evaluation
    (the rungs' and the final ones)."""
    from rfsweep.train.checkpoint_io import resume_checkpoint  # deferred: torch

    steps, nfe = 0, 0
    for run in runs:
        folder = Path(sweep_dir) / run
        steps += resume_checkpoint(folder)[1]
        for path in [folder / RESULTS_FILE, *sorted((folder / RUNGS).glob(f"*/{RESULTS_FILE}"))]:
            if path.is_file():
                nfe += evaluation_nfe(read_results(path))
    return {"train_steps": steps, "eval_nfe": nfe}


def censored(records: list[dict]) -> pd.DataFrame:
    """Table 1's censored rows: each variant the race stopped (and did not audit), the rung and step it stopped at,
    its place and interval there ("place at least" its best plausible place); and each variant whose training
    diverged, the rung it diverged before (none: after the last rung) and the step it diverged at (`diverged` holds
    the reason; no place)."""
    rows, rungs = [], 0
    for r in records:
        if "rung" not in r and "end" not in r:
            continue
        rungs += "rung" in r
        for v, d in sorted(r.get("diverged", {}).items()):
            rows.append({"variant": v, "stopped_rung": r.get("rung"), "stopped_step": d.get("step"),
                         "diverged": d["reason"]})
        if "rung" not in r:
            continue
        places = r["places"]
        for v in r["stopped"]:
            if v in r["audit"]:
                continue
            rank, lo, hi = places[v]
            rows.append({"variant": v, "stopped_rung": r["rung"], "stopped_step": r["step"], "rung_rank": rank,
                         "rung_lo": lo, "rung_hi": hi, "diverged": ""})
    cols = ["variant", "stopped_rung", "stopped_step", "rung_rank", "rung_lo", "rung_hi", "diverged"]
    out = pd.DataFrame(rows, columns=cols).astype({c: "Int64" for c in cols[1:6]})
    last = out["stopped_rung"].fillna(rungs + 1)  # diverged after the last rung: listed first
    return (out.assign(_at=last).sort_values(["_at", "rung_rank", "variant"], ascending=[False, True, True],
                                               na_position="first").drop(columns="_at").reset_index(drop=True))


def full_grid(sweep_dir: str | Path, runs: list[str], max_steps: int) -> dict:
    """What the same grid costs trained straight to the end: every run's `max_steps` training steps and, per run, the
    final evaluation's network evaluations of a run that finished (the protocol is the sweep's)."""
    finals = [read_results(p) for run in runs if (p := Path(sweep_dir) / run / RESULTS_FILE).is_file()]
    per_run = int(np.median([evaluation_nfe(df) for df in finals])) if finals else 0
    return {"train_steps": len(runs) * int(max_steps), "eval_nfe": len(runs) * per_run}


def forward_equivalents(cost: dict, batch_size: int) -> float:
    """Training and evaluation on one scale: a training step is `batch_size` samples through the network forward
    and backward (about three forward passes each), an evaluation's network evaluation one sample forward."""
    return 3.0 * batch_size * cost["train_steps"] + cost["eval_nfe"]


def compute_report(sweep_dir: str | Path, runs: list[str], max_steps: int, batch_size: int) -> dict:
    """The race's compute against the full grid's, counted from the run folders: training steps, evaluation network
    evaluations, and both on one scale (`forward_equivalents`), each with the fraction spent."""
    spent_now, full = spent(sweep_dir, runs), full_grid(sweep_dir, runs, max_steps)
    both = {k: forward_equivalents(c, batch_size) for k, c in (("spent", spent_now), ("full", full))}
    out = {"spent": spent_now, "full": full, "batch_size": int(batch_size)}
    out["fraction"] = {"train_steps": spent_now["train_steps"] / max(full["train_steps"], 1),
                       "eval_nfe": spent_now["eval_nfe"] / max(full["eval_nfe"], 1),
                       "forward_equivalents": both["spent"] / max(both["full"], 1.0)}
    return out


def compute_line(report: dict) -> str:
    s, f, fr = report["spent"], report["full"], report["fraction"]
    return (f"compute: {s['train_steps']} of the full grid's {f['train_steps']} training steps "
            f"({fr['train_steps']:.0%}), {s['eval_nfe']} of {f['eval_nfe']} evaluation network evaluations "
            f"({fr['eval_nfe']:.0%}); together {fr['forward_equivalents']:.0%} (a training step counted as "
            f"3 x {report['batch_size']} forward passes)")


def censored_markdown(records: list[dict], finished_places: pd.DataFrame) -> str:
    """Table 1's censored rows and the audit, in Markdown: each stopped variant with the rung it stopped at and its
    place and interval there (its final place is at least its best plausible place there, among the variants of that
    rung), and how many of the audited stopped variants reached the top group (`finished_places`: the finishers'
    variant and rank)."""
    rule = next((r["rule"] for r in records if "rung" in r), None)
    if rule is None:
        return ""
    rows = censored(records)
    end = next((r for r in records if "end" in r), {})
    lines = ["", "**Stopped by the race** (censored rows: not trained to the end, never ranked as if complete; "
                 "their place and 95% interval at the rung where they stopped, among that rung's variants):", "",
             "| variant | stopped at | place there [95%] | final place |", "|---|---|---|---|"]
    of = end.get("max_steps", "?")
    for r in rows.itertuples():
        if r.diverged:
            where = "after the last rung" if pd.isna(r.stopped_rung) else f"before rung {r.stopped_rung}"
            at = "?" if pd.isna(r.stopped_step) else r.stopped_step
            lines.append(f"| {r.variant} | diverged at step {at} of {of} ({where}) | none: "
                         f"{r.diverged.split(':')[0]} | none |")
        else:
            lines.append(f"| {r.variant} | rung {r.stopped_rung} (step {r.stopped_step} of {of}) | {r.rung_rank} "
                         f"[{r.rung_lo}-{r.rung_hi}] | at least {r.rung_lo} |")
    audit = sorted(set(end.get("audit", [])) & set(end.get("finished", [])))  # older logs: audited, then stopped
    if audit:
        final = finished_places.set_index("variant")["rank"]
        reached = [v for v in audit if v in final.index and final[v] <= rule["top"]]
        lines += ["", f"Audit: {len(audit)} stopped variants carried to the end ({', '.join(audit)}); "
                      f"{len(reached)} of them reached the top {rule['top']} (false stops"
                      + (f": {', '.join(reached)}" if reached else "") + ")."]
    return "\n".join(lines) + "\n"


def planned(variants: int, jobs_per_variant: float, steps: list[int], max_steps: int, rung_nfe: int, final_nfe: int,
            stops: list[int]) -> dict:
    """The compute of a race whose rungs stop `stops[i]` variants each for good (all zero: the most it can cost,
    every variant to the end plus the rungs' evaluations): training steps and evaluation network evaluations."""
    alive, train, nfe, before = variants, 0.0, 0.0, 0
    for step, out in zip(steps, stops):
        train += alive * jobs_per_variant * (step - before)
        nfe += alive * jobs_per_variant * rung_nfe
        alive, before = alive - out, step
    train += alive * jobs_per_variant * (max_steps - before)
    nfe += alive * jobs_per_variant * final_nfe
    return {"train_steps": int(round(train)), "eval_nfe": int(round(nfe))}


def replayed_stops(records: list[dict], rules: list[Rule], seed: int) -> list[int]:
    """How many variants each rung would stop for good (stopped, not audited) with `rules`, replayed on a reference
    sweep's decision log (its places at each rung, restricted to the variants still alive): the expected saving a
    dry run prints."""
    rungs = [r for r in records if "rung" in r]
    alive, out = None, []
    for i, (rec, rule) in enumerate(zip(rungs, rules)):
        alive = set(rec["places"]) if alive is None else alive
        at = pd.DataFrame([{"variant": v, "rank": p[0], "rank_lo": p[1], "rank_hi": p[2]}
                           for v, p in rec["places"].items() if v in alive])
        d = decide(at, rule, seed + i + 1)
        gone = set(d["stopped"]) - set(d["audit"])
        out.append(len(gone))
        alive -= gone
    return out


def decisions(records: list[dict]) -> pd.DataFrame:
    """The race rung by rung, one row per variant alive at a rung: rung, step, variant, place, rank_lo, rank_hi and
    the decision (go on, stopped, audit: stopped but carried to the end; diverged, without a place, and after the last
    rung without a rung either), for the W&B analysis run."""
    rows = []
    for r in records:
        if "end" in r:  # diverged after the last rung: no rung, the step it diverged at
            rows += [{"rung": None, "step": d.get("step"), "variant": v, "decision": "diverged"}
                     for v, d in sorted(r.get("diverged", {}).items())]
        if "rung" not in r:
            continue
        stopped, audit = set(r["stopped"]), set(r["audit"])
        for v, (rank, lo, hi) in sorted(r["places"].items(), key=lambda kv: (kv[1][0], kv[0])):
            what = "audit" if v in audit else "stopped" if v in stopped else "go on"
            rows.append({"rung": r["rung"], "step": r["step"], "variant": v, "place": rank, "rank_lo": lo,
                         "rank_hi": hi, "decision": what})
        rows += [{"rung": r["rung"], "step": r["step"], "variant": v, "decision": "diverged"}
                 for v in sorted(r.get("diverged", {}))]
    return pd.DataFrame(rows, columns=["rung", "step", "variant", "place", "rank_lo", "rank_hi", "decision"])


def final_places(sweep_dir: str | Path, runs: dict[str, list[str]], b: int, seed: int) -> pd.DataFrame:
    """The full protocol's places (column `all`) of a sweep whose `runs` (variant -> run folders) all finished."""
    from analysis.commands.sweep_rows import required_banks  # deferred: scipy
    from analysis.confidence import bootstrap

    df = pd.concat([read_results(Path(sweep_dir) / r / RESULTS_FILE).assign(results_dir=str(Path(sweep_dir) / r))
                    for rs in runs.values() for r in rs], ignore_index=True)
    return bootstrap(df, required_banks(df), b=b, seed=seed).places("all")


def calibrated_margins(sweeps: list[tuple[Path, dict[str, list[str]]]], steps: list[int], top: int, keep: float,
                       audit: int, b: int, seed: int) -> list[int]:
    """The margin per rung measured on calibration sweeps (every variant of each ran to the end and was evaluated at
    every rung; e.g. the demo with each of its seeds) the way a race uses it: rung by rung, the margin is the most
    places by which a variant of a sweep's final top `top` had its best plausible place beyond `top`, over the
    sweeps, among the variants a race with the margins so far (and this keep, audit and seed) would still have alive
    in that sweep (places do not move monotonically when variants leave). A race of one of these sweeps' grid and
    seed with these margins keeps its final top group to the end."""
    finals = [final_places(s, runs, b, seed) for s, runs in sweeps]
    alive = [sorted(runs) for _, runs in sweeps]
    carried: list[set] = [set() for _ in sweeps]
    out = []
    for i, step in enumerate(steps):
        places = []
        for (sweep, runs), now in zip(sweeps, alive):
            rows, banks = rung_rows(sweep, {v: runs[v] for v in now}, step)
            places.append(rung_places(rows, banks, b, seed))
        out.append(max(margins(p, f, top) for p, f in zip(places, finals)))
        for k, p in enumerate(places):
            d = decide(p, Rule(top, out[-1], keep, audit), seed + i + 1, carried[k])
            alive[k] = sorted(set(d["go_on"]) | set(d["audit"]))
            carried[k] |= set(d["audit"])
    return out


def sweep_runs(sweep_dir: str | Path) -> dict[str, list[str]]:
    """variant -> run folders (relative to the sweep) from its manifest."""
    manifest = json.loads((Path(sweep_dir) / "manifest.json").read_text())
    out: dict[str, list[str]] = {}
    for j in manifest["jobs"]:
        out.setdefault(j["variant"], []).append(j["run"])
    return out


def calibration_record(rungs: list, top: int, keep: float, audit: int, seed: int, measured: list[int],
                       sweeps: list[str], bootstrap: int) -> dict:
    """What a calibration's race_margins.json holds: the margins and everything they depend on (a race must share
    it: `rfsweep.run.race_control.RaceConf.margin_list` refuses other values)."""
    return {"rungs": [float(x) for x in rungs], "top": int(top), "keep": float(keep), "audit": int(audit),
            "seed": int(seed), "bootstrap": int(bootstrap), "margins": [int(m) for m in measured],
            "calibrations": sweeps}
