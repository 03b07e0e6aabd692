"""The run folder: the one home of its layout and of the small files that say where a run stands.

    <run>/status.json        the run's state: running (with progress), trained, preempted, cancelled, failed, done
    <run>/outcome.json       what the last launch of this job did (done, skipped, failed, refused, ...), for the
                             sweep's summary; written also when the job refused to touch the run
    <run>/lease.json         who trains the run now (host, pid, SLURM job, heartbeat): one trainer per folder
    <run>/config.json        the resolved config the run was started with (written once); a resume must match it
    <run>/model.json         parameters and training FLOPs per sample (the scaling study's compute axis)
    <run>/checkpoints/       step-<NNNNNNNN>.ckpt (resume: weights, EMA, optimizer, loops; the newest
                             `trainer.keep_checkpoints`, a file or FSDP's folder of shards), best.safetensors (the raw
                             and EMA weights of the step with the lowest EMA validation loss: what evaluation reads)
    <run>/metrics.csv        this launch's metrics; earlier launches' rows in metrics-part<k>.csv
    <run>/results.csv        the evaluation (rfsweep.results)

Every write is atomic (rfsweep.atomic). Status records carry the job's context (host, pid, SLURM job id, restarts,
log file) so `python -m analysis status` can point at the job and its log.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from rfsweep.atomic import atomic_write
from rfsweep.cluster.slurm import job_log, restart_count, slurm_job_id
from rfsweep.errors import ConfigError

RUNGS = "rungs"  # a race's rung evaluations: <run>/rungs/<step>/ (rfsweep.run.rung), apart from the run's results
STATUS, OUTCOME, LEASE, CONFIG, MODEL_INFO = "status.json", "outcome.json", "lease.json", "config.json", "model.json"
CHECKPOINTS, BEST = "checkpoints", "best.safetensors"
CHECKPOINT, PARTIAL = "step-{:08d}.ckpt", ".partial"  # a resumable checkpoint; a folder being written (FSDP)
LEGACY = ("last.ckpt", "last.ckpt.old")  # the one checkpoint of runs written before step-numbered ones, resumed
METRICS, METRICS_PART = "metrics.csv", "metrics-part{}.csv"

# States of status.json. `running` is what a live job writes (a dead one leaves it behind: its lease and heartbeat
# tell them apart); `preempted` means a checkpoint was written at a stop signal; `cancelled` is a stop SLURM says
# was a cancellation (scancel), which is never requeued.
PAUSED = "paused"  # stopped at a race's rung (rung.stop_at), evaluated there; the next rung continues it
STATES = ("done", "trained", "running", "preempted", "cancelled", "failed", PAUSED)
FINISHED = "done"
TRAINED = ("trained", FINISHED)  # the states of a run whose training is over


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """The resumable checkpoint of `step`: <run>/checkpoints/step-<NNNNNNNN>.ckpt (a file, or FSDP's folder)."""
    return checkpoint_dir(run_dir) / CHECKPOINT.format(int(step))


def named_step(path: Path) -> int | None:
    """The step a checkpoint's name says (None: a legacy name, or not a checkpoint's name)."""
    stem, dot, ext = path.name.partition(".")
    head, _, digits = stem.partition("-")
    ok = head == "step" and dot + ext == ".ckpt" and digits.isdigit()
    return int(digits) if ok else None


def checkpoint_candidates(run_dir: str | Path) -> list[Path]:
    """The run's resumable checkpoints, newest first by the step in their names, then a legacy `last.ckpt` and
    `last.ckpt.old`. Names only: `rfsweep.train.checkpoint_io.resume_checkpoint` reads which one is complete."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    numbered = sorted((p for p in folder.iterdir() if named_step(p) is not None), key=named_step, reverse=True)
    return [*numbered, *(p for p in (folder / name for name in LEGACY) if p.exists())]


def remove_checkpoint_leftovers(run_dir: str | Path) -> None:
    """What a writer killed mid-write left (an FSDP `.partial` folder, an atomic write's temporary file): removed by
    the next writer before it writes. Never a complete checkpoint."""
    folder = checkpoint_dir(run_dir)
    for p in [*folder.glob(f"*.ckpt{PARTIAL}"), *folder.glob(".step-*.ckpt.*.tmp")]:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def prune_checkpoints(run_dir: str | Path, newest: Path, keep: int) -> list[Path]:
    """After `newest` is written and synced: every other checkpoint goes but the `keep` - 1 newest before it (legacy
    ones count as the oldest; one of a later step is one a resume skipped as damaged). Returns the removed ones."""
    others = [p for p in checkpoint_candidates(run_dir) if p != newest]
    older = [p for p in others if named_step(p) is None or named_step(p) < named_step(newest)]
    gone = [p for p in others if p not in older[:keep - 1]]
    for p in gone:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return gone


def job_context() -> dict:
    """Where this process runs: host, pid and, under SLURM, the job id, restart count and log file."""
    ctx = {"host": socket.gethostname(), "pid": os.getpid()}
    job = slurm_job_id()
    if job:
        ctx.update(slurm_job=job, restarts=restart_count())
    log = job_log()
    if log:
        ctx["log"] = log
    return ctx


def _write_record(run_dir: str | Path, name: str, head: dict, extra: dict) -> None:
    """Atomically write the record `<run>/<name>`: `head`, the time, the job's context (`job_context`), `extra`."""
    record = {**head, "time": time.time(), **job_context(), **extra}
    with atomic_write(Path(run_dir) / name, "w") as f:
        f.write(json.dumps(record, indent=1))


def write_status(run_dir: str | Path, state: str, **extra) -> None:
    """Atomically record the run's state with the job's context."""
    if state not in STATES:
        raise ValueError(f"state={state!r} (allowed: {', '.join(STATES)})")
    _write_record(run_dir, STATUS, {"state": state}, extra)


def is_trained(status: dict, strict: bool = False) -> bool:
    """Whether a status record says the run's training is over: its state is trained or done, or (unless `strict`)
    it was stopped or failed while evaluating (its record's stage is `evaluation`)."""
    return status.get("state") in TRAINED or (not strict and status.get("stage") == "evaluation")


def read_status(run_dir: str | Path) -> dict:
    """The run's status record; {} when there is none (a corrupt file reads as a failure with the reason)."""
    try:
        return json.loads((Path(run_dir) / STATUS).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        return {"state": "failed", "reason": f"unreadable {STATUS} ({type(e).__name__})"}


def write_outcome(run_dir: str | Path, outcome: str, reason: str = "", **extra) -> None:
    """What this launch of the job did, for the sweep's summary (never changes the run's state)."""
    _write_record(run_dir, OUTCOME, {"outcome": outcome, "reason": reason}, extra)


def read_outcome(run_dir: str | Path) -> dict:
    try:
        return json.loads((Path(run_dir) / OUTCOME).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def keep_previous_metrics(run_dir: Path) -> None:
    """Lightning's CSV logger starts metrics.csv afresh; a resumed run keeps the earlier rows in
    metrics-part<k>.csv (the analysis reads all parts, `metrics_files`)."""
    current = Path(run_dir) / METRICS
    if current.is_file():
        k = len(list(Path(run_dir).glob(METRICS_PART.format("*"))))
        os.replace(current, Path(run_dir) / METRICS_PART.format(k))


def metrics_files(run_dir: str | Path) -> list[Path]:
    """Every metrics file of a run, oldest first."""
    run_dir = Path(run_dir)
    parts = sorted(run_dir.glob(METRICS_PART.format("*")), key=lambda p: int(p.stem.rsplit("part", 1)[1]))
    return [*parts, run_dir / METRICS]


# Config keys that may differ when a run is resumed: they do not change the trained weights (where the run's files
# go, how they are logged, how many loader workers or threads, how often a checkpoint is written and how many are
# kept, how many devices share the global batch, how the job behaves on a cluster, how the finished weights are
# sampled and evaluated: results rows carry their settings; a race's rung: where a launch pauses) or only extend them
# (max_steps: neither the data stream nor the learning-rate schedule depends on it, so a longer run continues exactly
# as if it had been started longer).
RESUMABLE_KEYS = ("paths", "logger", "run_dir", "job_name", "dry_run", "reference_sweep", "stage", "cluster", "eval",
                  "sampler", "grid", "trainer.num_workers", "trainer.threads", "trainer.ckpt_every",
                  "trainer.keep_checkpoints", "trainer.devices", "trainer.max_steps", "rung")


def flatten(d, prefix: str = "") -> dict:
    """A nested config as {"trainer.shift": value}; an empty mapping keeps its key."""
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def _free(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def _same(x, y) -> bool:
    """Equal as JSON (NaN equals NaN); a key one side lacks equals null on the other: a key added to the schema
    later with a null default (a feature off) does not change what an earlier run trained."""
    x, y = (None if v == "<absent>" else v for v in (x, y))
    return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)


def config_changes(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ between a run's saved config and the current one, outside RESUMABLE_KEYS."""
    a, b = flatten(saved), flatten(current)
    return sorted(k for k in a.keys() | b.keys() if not _free(k) and not _same(a.get(k, "<absent>"),
                                                                               b.get(k, "<absent>")))


def check_config(run_dir: str | Path, resolved: dict) -> None:
    """Refuse (ConfigError, one line naming the keys) to resume a run whose saved config differs in a key that
    changes the result."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"config error: {path}: unreadable ({type(e).__name__}); move it away to start the run "
                          f"afresh") from None
    changed = config_changes(saved, resolved)
    if changed:
        a, b = flatten(saved), flatten(resolved)
        shown = ", ".join(f"{k} ({a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r})" for k in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ConfigError(f"config error: {run_dir} was started with another config: {shown}{more} (allowed: the "
                          f"saved values in {path}, or another run folder, e.g. name=... or seed=...)")


def save_config(run_dir: str | Path, resolved: dict) -> None:
    """The run's resolved config, written when it starts (never rewritten: it is what the run was trained with)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        with atomic_write(path, "w") as f:
            json.dump(resolved, f, indent=1)


def read_config(run_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        return None
