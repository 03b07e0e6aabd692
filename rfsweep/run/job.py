"""One job, from its config to a finished run folder: validate, take the run folder's lease, train (or resume),
sample a grid, evaluate, and tell the sweep what happened (`outcome.json`).

    run_job                      the exit code; records the outcome (rank 0, not for dry runs)
      _print_plan                dry_run=true: the job's cost, nothing trained or written
      _hold_folder_and_run       checks, skips a finished run, rank 0 holds the run folder's lease and builds
        _train_and_evaluate      rank 0, lease held: train (unless trained), sample the grid, evaluate
        _train_as_other_rank     another rank of a multi-device run: trains beside rank 0

A job never takes other jobs down: every error ends in an exit code and a recorded outcome (bad input: 2, a failed
run: 1, a stop signal: 3), never in an exception that escapes into the launcher. The one exception is the
`SystemExit` of submitit's requeue, which must end the process (SLURM starts the job again).
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rfsweep import runfolder
from rfsweep.backbones.flops import parameter_count
from rfsweep.cluster import slurm
from rfsweep.cluster.lease import Lease, LeaseHeld, LeaseLost, describe
from rfsweep.cluster.ranks import RANK_ENV, Launch, RanksDisagree, outside_launch, process_rank
from rfsweep.cluster.signals import PreemptionGuard, job_guard
from rfsweep.console import tidy_logging
from rfsweep.errors import ConfigError, UserError
from rfsweep.fence import Fence, fenced
from rfsweep.run import rung
from rfsweep.run.builders import build_model, build_module
from rfsweep.run.plan import dry_run_line, expected_resolution
from rfsweep.run.preflight import preflight
from rfsweep.run.tracking import job_run

LAUNCH_ENV = "RFSWEEP_LAUNCH"  # the id of the sweep launch a job belongs to (set by the sweep's summary callback)
RESUME_ENV = "RFSWEEP_RESUME"  # rank 0's resume decision, inherited by the ranks Lightning's own launcher starts


@dataclass
class Outcome:
    code: int  # the process exit code of a single run
    outcome: str  # done | skipped | failed | refused | preempted | cancelled | dry-run
    reason: str = ""


def eval_settings(cfg: DictConfig) -> list[tuple[int, float]]:
    """The sampler settings the job evaluates, as (steps, cfg)."""
    return [(int(s), float(c)) for s, c in cfg.eval.settings]


def is_multirun() -> bool:
    """This process runs a job of a Hydra multirun (`-m`): its exit code goes back to Hydra, not to the shell."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def expected_results(cfg: DictConfig) -> list[tuple]:
    from rfsweep.run.eval_stage import evaluated_weights  # deferred: torchmetrics, open_clip (seconds); not a dry run

    return [(w, s, c) for w in evaluated_weights(cfg) for s, c in eval_settings(cfg)]


def run_finished(cfg: DictConfig) -> bool:
    """Done, with every evaluation row the config asks for (stage=train: trained)."""
    from rfsweep.results import RESULTS_FILE, results_complete  # deferred: pandas (~0.3 s), not needed by a dry run

    run_dir = Path(cfg.run_dir)
    status = runfolder.read_status(run_dir)
    if cfg.stage == "train":
        return runfolder.is_trained(status, strict=True)
    if status.get("state") != runfolder.FINISHED:
        return False
    if not cfg.eval.enabled:
        return True
    from rfsweep.evaluation.bank import BANK_FILE, bank_complete  # deferred: rfsweep.evaluation loads torchmetrics

    evaluator = configured_evaluator_id(cfg)  # a run evaluated before its evidence bank existed: evaluated again
    return results_complete(run_dir / RESULTS_FILE, expected_results(cfg), evaluator=evaluator) and \
        bank_complete(run_dir / BANK_FILE, expected_results(cfg), evaluator)


def configured_evaluator_id(cfg: DictConfig) -> str:
    """The id of the evaluator the config names, without loading it: results of another evaluator are not this
    job's (after `make train-clip`, finished runs are evaluated again, not retrained)."""
    from rfsweep.evaluation.evaluators import evaluator_id  # deferred: rfsweep.evaluation loads torchmetrics, open_clip
    from rfsweep.run.eval_stage import evaluator_kwargs  # deferred: as above

    return evaluator_id(cfg.eval.evaluator, **evaluator_kwargs(cfg))


def check_multi_device(cfg: DictConfig) -> None:
    """Several devices per job re-run the job's command once per device: a local multirun would re-run the whole
    sweep in each. Under SLURM each task is one rank, started by the scheduler. A LOCAL_RANK without WORLD_SIZE, not
    in a launch of SLURM tasks or torchrun of this many ranks, was left in the environment by something else (an
    in-process fit: Lightning's teardown removes WORLD_SIZE, not LOCAL_RANK; the ranks its launcher starts get both):
    Lightning would take this process for a rank started from outside and wait in the rendezvous for the others,
    which nobody starts. With one device, a rank other than 0 from the environment would train without the lease and
    never evaluate."""
    if cfg.trainer.devices > 1 and is_multirun() and "SLURM_NTASKS" not in os.environ:
        raise ConfigError(f"config error: trainer.devices={cfg.trainer.devices} in a local multirun (allowed: 1, "
                          f"or several with hydra/launcher=slurm, one task per device, or a single run)")
    world = int(cfg.trainer.devices) * int(cfg.trainer.num_nodes)
    launched = "WORLD_SIZE" in os.environ or outside_launch(world) is not None
    if world > 1 and "LOCAL_RANK" in os.environ and not launched:
        raise ConfigError(f"config error: LOCAL_RANK={os.environ['LOCAL_RANK']} is set in the environment without "
                          f"WORLD_SIZE, and trainer.devices={cfg.trainer.devices}: no launcher started this process, "
                          f"so the other ranks would never come (allowed: unset LOCAL_RANK, or start every rank with "
                          f"torchrun or SLURM)")
    if world == 1 and process_rank() != 0:  # one rank is rank 0: it holds the lease and evaluates
        found = next((f"{k}={os.environ[k]}" for k in RANK_ENV if os.environ.get(k) is not None),
                     f"rank {process_rank()}")
        raise ConfigError(f"config error: {found} is set in the environment and trainer.devices=1: this process would "
                          f"run as another rank of a launch that has none (allowed: unset it, or launch as many ranks "
                          f"as trainer.devices x trainer.num_nodes)")


def _bad_input() -> tuple[type, ...]:
    """What a job reports in one line (exit 2): every error a user can cause (rfsweep.errors), and a missing file."""
    return (UserError, FileNotFoundError)


def run_job(cfg: DictConfig) -> int:
    """Run the job; returns its exit code. Records the outcome in the run folder (rank 0, not for dry runs)."""
    bad_input = _bad_input()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not cfg.dry_run:  # a dry run loads neither Lightning nor transformers: nothing of theirs to tidy
        tidy_logging()
    rank0 = process_rank() == 0
    fence = Fence(cfg.run_dir)  # rank 0 adds its lease once it holds it; every write under run_dir asks it
    launch = Launch(cfg.run_dir, int(cfg.trainer.devices) * int(cfg.trainer.num_nodes),
                    float(cfg.cluster.start_timeout_s), peer_timeout_s=float(cfg.cluster.peer_timeout_s),
                    on_peer_lost=lambda reason, requeue: _peer_lost(cfg, fence, rank0, reason, requeue))
    with job_guard() as guard, fenced(fence):
        try:
            try:
                result = _print_plan(cfg) if cfg.dry_run else _hold_folder_and_run(cfg, guard, launch, fence)
            except InstantiationException as e:  # hydra wraps what a configured class raises: report the cause
                if isinstance(e.__cause__, bad_input):
                    raise e.__cause__ from None
                raise
        except Exception as e:  # a job never takes other jobs down: every error ends in an exit code
            launch.recording()  # every rank may have raised it (a non-finite loss): no watchdog ends this one now
            died = launch.died_beside()  # a collective broken by a peer killed without a word (gloo: reset)
            if died is not None:
                print(f"error: {type(e).__name__} in a collective: {died}", file=sys.stderr, flush=True)
                if launch.lowest_living():
                    _peer_lost(cfg, fence, rank0, died, requeue=True)
                result = Outcome(1, "failed", died)
            else:
                result = _failure(cfg, e, bad_input, rank0, fence.lost)
            launch.fail(result.reason)  # the other ranks stop waiting for this one
        finally:
            launch.close()
        if result.outcome not in ("dry-run", "rank", "lost") and rank0 and not cfg.dry_run and fence.holds():
            runfolder.write_outcome(cfg.run_dir, result.outcome, result.reason, code=result.code,
                                    launch=os.environ.get(LAUNCH_ENV))
    return result.code


def _peer_lost(cfg: DictConfig, fence: Fence, rank0: bool, reason: str, requeue: bool) -> None:
    """Another rank failed or died while this one trained (`Launch`'s watchdog, from its thread, before it ends this
    process): rank 0 records it in status.json; a death is handed back to the scheduler (the job is requeued and
    resumes from its last checkpoint), a failure is not."""
    job = slurm.slurm_job_id()
    if not requeue:
        back = "not requeued: a failure, not a death"
    elif not job:
        back = "not requeued: outside SLURM (rerun the same command to resume)"
    elif not cfg.cluster.requeue:
        back = "not requeued: cluster.requeue=false"
    elif slurm.restart_count() >= cfg.cluster.max_requeues:
        back = f"not requeued: {slurm.restart_count()} restarts reached cluster.max_requeues={cfg.cluster.max_requeues}"
    else:
        back = None
    if rank0 and fence.holds():
        status = runfolder.read_status(cfg.run_dir)
        runfolder.write_status(cfg.run_dir, "failed", step=status.get("step"), reason=reason,
                               requeue=back or f"requeueing SLURM job {job}")
    if back is None:
        back = slurm.requeue(job)
    print(f"{reason}: {back}", file=sys.stderr, flush=True)


def _failure(cfg: DictConfig, e: BaseException, bad_input: tuple, rank0: bool, lost: str | None = None) -> Outcome:
    """The outcome of an exception that ended the job, said in one line (bad input) or with its traceback (a bug or a
    broken node); a failure is recorded in status.json (rank 0), keeping the stage it happened in (a run that failed
    while evaluating stays trained: `stage=evaluate` takes it). `lost`: why the lease was lost, if it was (whatever
    ended the job, the folder is another process's: nothing is recorded there)."""
    from rfsweep.train.diffusion_module import NonFiniteLossError  # deferred: lightning, not needed by a dry run

    if isinstance(e, LeaseLost) or lost:  # the folder is another process's now: nothing more is written there
        if not isinstance(e, LeaseLost):
            traceback.print_exception(type(e), e, e.__traceback__)
        print(f"error: {lost or e}; this process stopped without writing to {cfg.run_dir}", file=sys.stderr,
              flush=True)
        return Outcome(2, "lost", str(lost or e))
    if isinstance(e, LeaseHeld):
        print(f"error: {e}", file=sys.stderr, flush=True)
        return Outcome(2, "refused", str(e))
    if isinstance(e, RanksDisagree):
        print(f"error: {e}", file=sys.stderr, flush=True)
        return Outcome(2, "failed" if rank0 else "rank", str(e))
    if isinstance(e, bad_input):
        print(f"error: {e}", file=sys.stderr, flush=True)
        return Outcome(2, "failed", str(e))
    if isinstance(e, NonFiniteLossError):
        print(f"failed: {e}; recorded in {cfg.run_dir}/{runfolder.STATUS}", file=sys.stderr, flush=True)
        return Outcome(1, "failed", f"{type(e).__name__}: {e}")
    traceback.print_exception(type(e), e, e.__traceback__)
    reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
    if rank0 and Path(cfg.run_dir, runfolder.STATUS).is_file():
        status = runfolder.read_status(cfg.run_dir)
        if status.get("state") != "failed":  # a failure inside training is already recorded
            runfolder.write_status(cfg.run_dir, "failed", step=status.get("step"), reason=reason,
                                   **({"stage": "evaluation"} if runfolder.is_trained(status) else {}))
    return Outcome(1, "failed", reason)


def _print_plan(cfg: DictConfig) -> Outcome:
    """dry_run=true: the job's line of the plan (`rfsweep.run.plan`), nothing trained, nothing written; a job that
    would be refused (the preflight without its data folder) is refused in one line instead (exit 2)."""
    preflight(cfg, data=False, plan=True)
    print(dry_run_line(cfg), flush=True)
    if cfg.reference_sweep and not is_multirun():  # a sweep's callback prints it once for all its jobs
        print(expected_resolution(str(cfg.reference_sweep), [cfg]), flush=True)
    return Outcome(0, "dry-run")


def _hold_folder_and_run(cfg: DictConfig, guard: PreemptionGuard, launch: Launch, fence: Fence) -> Outcome:
    """The preflight, then a finished run is skipped; rank 0 takes the run folder's lease, checks the stage, builds
    the module, the evaluator and the W&B run, decides whether and from which checkpoint to train, tells the other
    ranks, and trains and evaluates under the lease (`_train_and_evaluate`); another rank follows its decisions
    (`_train_as_other_rank`)."""
    formulation = preflight(cfg)
    run_dir = Path(cfg.run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    runfolder.check_config(run_dir, resolved)  # a finished run of another config is not this job's result
    at_rung = rung.active(cfg)
    if at_rung and rung.finished(cfg, configured_evaluator_id(cfg)):
        print(f"skip: {run_dir} is evaluated at rung {cfg.rung.stop_at}", flush=True)
        launch.fail("skipped: evaluated at this rung earlier")  # a rank that read the folder a moment apart
        return Outcome(0, "paused", f"rung {cfg.rung.stop_at}, evaluated earlier")
    if at_rung:
        rung.check_reachable(cfg, runfolder.read_status(run_dir))
    elif run_finished(cfg):
        print(f"skip: {run_dir} is finished", flush=True)
        launch.fail("skipped: finished earlier")  # a rank that read the folder a moment apart stops waiting
        return Outcome(0, "skipped", "finished earlier")
    check_multi_device(cfg)
    rank0 = process_rank() == 0
    if not rank0:  # another rank: trains beside rank 0 as it decides, never evaluates, never holds the lease
        return _train_as_other_rank(cfg, formulation, run_dir, guard, launch)
    lost = lambda held: fence.lose(f"{run_dir}: the lease was taken over by {describe(held)}")  # noqa: E731
    with Lease(run_dir, cfg.cluster.lease_timeout_s, on_lost=lost) as lease:
        fence.lease = lease
        runfolder.check_config(run_dir, resolved)  # again: another process may have started it meanwhile
        status = runfolder.read_status(run_dir)
        trained = runfolder.is_trained(status) or (at_rung and rung.paused_here(cfg))
        if cfg.stage == "evaluate" and not trained:
            raise ConfigError(f"config error: stage=evaluate but {run_dir} is not trained (state "
                              f"{status.get('state', 'not started')}; allowed: stage=all or train first)")
        if guard.stop_requested():  # stopped while starting: nothing new to save, hand the job back
            launch.fail("rank 0 was stopped while starting")
            return _stopped(cfg, run_dir, guard, status.get("step") or 0, "evaluation" if trained else "training")
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        from rfsweep.run.eval_stage import configured_evaluator  # deferred: torchmetrics, open_clip; not a dry run
        from rfsweep.train.checkpoint_io import resume_checkpoint  # deferred: lightning, not needed by a dry run

        module, data = build_module(cfg, formulation, train=not trained)
        evaluator = configured_evaluator(cfg) if cfg.eval.enabled or at_rung else None  # missing weights: now
        resume = None if trained else resume_checkpoint(run_dir)[0]
        launch.agree({"train": not trained, "resume": str(resume) if resume else None})  # a refusal above: fail()
        os.environ[RESUME_ENV] = str(resume) if resume else ""  # the ranks Lightning's own launcher starts
        if trained:
            launch.done()  # the other ranks end now: rank 0 evaluates alone
        net = module.net
        with job_run(cfg, run_dir, module.meta, "evaluate" if trained else "train", params=parameter_count(net),
                     depth=len(getattr(net, "blocks", [])) or None) as tracker:
            if not trained and not status.get("step"):  # a fresh run: its formulation as it will train
                try:
                    tracker.log_formulation(formulation)
                except Exception as e:  # a diagnostic: never the reason a job fails
                    print(f"warning: the formulation's curves were not logged to W&B ({type(e).__name__}: {e})",
                          file=sys.stderr, flush=True)
            result = _train_and_evaluate(cfg, run_dir, module, data, evaluator, guard, launch, tracker, trained,
                                         resume)
            tracker.finish(result.outcome, result.reason)
            return result


def _train_as_other_rank(cfg: DictConfig, formulation, run_dir: Path, guard: PreemptionGuard,
                         launch: Launch) -> Outcome:
    """A rank other than 0 of a multi-device run: build, then take rank 0's decisions (whether to train, from which
    checkpoint: from the ranks' agreement, or inherited from rank 0 under Lightning's own launcher), train; rank 0
    reports. A rank that fails to build refuses before the agreement (rank 0 learns it at once, records it, exits 2);
    a run its status says is trained is not built (rank 0 decides; it would build after the agreement if rank 0
    still trains it)."""
    from rfsweep.run.fit import fit  # deferred: lightning, not needed by a dry run

    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    trained = runfolder.is_trained(runfolder.read_status(run_dir)) or (rung.active(cfg) and rung.paused_here(cfg))
    built = None if trained else build_module(cfg, formulation, train=True)
    decisions = launch.agree() if launch.shared else {"train": True, "resume": os.environ.get(RESUME_ENV) or None}
    if not decisions.get("train"):
        launch.done()
        return Outcome(0, "rank", "trained: rank 0 evaluates alone")
    module, data = built or build_module(cfg, formulation, train=True)
    fit(cfg, module, data, run_dir, guard, resume=Path(decisions["resume"]) if decisions.get("resume") else None)
    launch.done()
    return Outcome(0, "rank")


def _train_and_evaluate(cfg: DictConfig, run_dir: Path, module, data, evaluator, guard: PreemptionGuard,
                        launch: Launch, tracker, trained: bool, resume: Path | None) -> Outcome:
    """Rank 0: train (unless trained; from `resume`), sample the grid, evaluate; the run folder's lease is held."""
    from rfsweep.run.eval_stage import EvaluationStopped, evaluate_run, write_samples  # deferred: torchmetrics (~3 s)
    from rfsweep.run.fit import fit  # deferred: lightning, not needed by a dry run
    from rfsweep.train.checkpoint_io import load_weights  # deferred: lightning, not needed by a dry run

    if not trained:
        runfolder.save_config(run_dir, OmegaConf.to_container(cfg, resolve=True))
        step = fit(cfg, module, data, run_dir, guard, tracker, resume=resume)
        launch.done()  # the other ranks' training is over: rank 0 goes on alone
        if guard.stop_requested():
            return _stopped(cfg, run_dir, guard, step, "training", tracker)
        if getattr(module, "_sharded", False):  # FSDP's shards lived on ranks that have ended: a whole module
            module = build_model(cfg, module.formulation)
    if rung.active(cfg):
        return _evaluate_rung(cfg, run_dir, module, evaluator, guard, tracker)
    if cfg.stage == "train":  # evaluation is its own job (stage=evaluate), e.g. on other nodes
        print(f"trained: {run_dir} (evaluate with stage=evaluate)", flush=True)
        return Outcome(0, "done", "trained (stage=train)")
    info = load_weights(module, run_dir)
    if guard.stop_requested():  # a signal between training and evaluation: the next launch evaluates
        return _stopped(cfg, run_dir, guard, info["step"], "evaluation", tracker)
    module.to(torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu"))
    module.place_frozen()
    grid, captions = write_samples(cfg, module, run_dir)
    tracker.log_samples(grid, captions, info["step"])
    if cfg.eval.enabled:
        try:
            evaluate_run(cfg, module, run_dir, info, eval_settings(cfg), evaluator, stop=guard.stop_requested,
                         tracker=tracker)
        except EvaluationStopped:
            return _stopped(cfg, run_dir, guard, info["step"], "evaluation", tracker)
    runfolder.write_status(run_dir, runfolder.FINISHED, step=info["step"])
    print(f"done: {run_dir}", flush=True)
    return Outcome(0, "done")


def _evaluate_rung(cfg: DictConfig, run_dir: Path, module, evaluator, guard: PreemptionGuard, tracker) -> Outcome:
    """Rank 0, paused at a race's rung: evaluate with the rung's protocol into rungs/<step>/ (`rfsweep.run.rung`)."""
    from rfsweep.run.eval_stage import EvaluationStopped, evaluate_run  # deferred: torchmetrics (~3 s)
    from rfsweep.train.checkpoint_io import load_weights  # deferred: lightning, not needed by a dry run

    step = int(cfg.rung.stop_at)
    if guard.stop_requested():
        return _stopped(cfg, run_dir, guard, step, "rung", tracker)
    info = load_weights(module, run_dir)
    module.to(torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu"))
    module.place_frozen()
    at = rung.eval_config(cfg)
    try:
        evaluate_run(at, module, run_dir, info, eval_settings(at), evaluator, stop=guard.stop_requested,
                     out_dir=rung.folder(run_dir, step))
    except EvaluationStopped:
        return _stopped(cfg, run_dir, guard, step, "rung", tracker)
    print(f"paused: {run_dir} at rung {step} (evaluated into {rung.folder(run_dir, step)})", flush=True)
    return Outcome(0, "paused", f"rung {step}")


def _stopped(cfg: DictConfig, run_dir: Path, guard: PreemptionGuard, step: int, stage: str, tracker=None) -> Outcome:
    """A stop signal ended the job at a safe point (the checkpoint is written): record it, finish the W&B run, then
    hand the job back to the scheduler (requeue) where the signal asks for it. The W&B run is finished first: a
    requeue ends every process of the job, W&B's service among them."""
    record = {"step": int(step), "stage": stage, "signal": guard.received}
    since = guard.seconds_since_signal()
    if since is not None:  # how long the stop took: signal_delay_s must leave room for it (README)
        record["signal_to_handback_s"] = round(since, 2)
    runfolder.write_status(run_dir, "preempted", **record, requeue="handing back to the scheduler")
    if tracker is not None:
        tracker.finish("preempted", f"{guard.received} during {stage}")
    try:
        back = guard.hand_back(cfg.cluster.requeue, cfg.cluster.max_requeues)
    except SystemExit:  # submitit requeued the job and ends the process
        runfolder.write_status(run_dir, "preempted", **record, requeue="requeued by submitit")
        runfolder.write_outcome(run_dir, "requeued", f"{guard.received} during {stage}",
                                launch=os.environ.get(LAUNCH_ENV))
        print(f"pre-empted at step {step} ({stage}): checkpoint written; requeued by submitit"
              + (f" {record['signal_to_handback_s']} s after the signal" if since is not None else ""), flush=True)
        raise
    runfolder.write_status(run_dir, back.state, **record, requeue=back.requeue)
    print(f"pre-empted at step {step} ({stage}): checkpoint written to {runfolder.checkpoint_path(run_dir, step)}; "
          f"{back.requeue}; rerun the same command to resume"
          + (f" ({record['signal_to_handback_s']} s after the signal)" if since is not None else ""), flush=True)
    return Outcome(3, back.state, f"{guard.received} during {stage}; {back.requeue}")
