"""The pre-emption signals, caught for the whole job and acted on at safe points.

SLURM (or submitit, or a person) stops a job with a signal:
- the *pre-emption signal*, sent `signal_delay_s` before the time limit: USR2 from submitit (`--signal=USR2@<delay>`,
  or `$SUBMITIT_PREEMPT_SIGNAL`), USR1 from a plain sbatch script's `--signal=USR1@<delay>`: the job checkpoints and
  goes back in the queue;
- SIGTERM: `scancel`, the time limit itself, a node pre-emption: the job checkpoints and stops, never requeues.

From the job's start to its end the guard only notes the signal (Lightning's own SIGTERM handler is never
installed: `rfsweep.run.fit`); training stops after the current step, writes the step's checkpoint and records the
stop; evaluation stops after the current sampler setting. Then `hand_back` puts the job back in the queue, exactly
once: through submitit's own handler when submitit runs the job (it counts the
timeouts against `max_num_timeout`, requeues and exits), else with `scontrol requeue` for a plain sbatch job,
up to `cluster.max_requeues` restarts.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from rfsweep.cluster import slurm

TERM = "SIGTERM"


def signal_name(code: int) -> str:
    """The name of a signal number (a stop code another rank sent)."""
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def preemption_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, SIGUSR1, SIGUSR2 and submitit's signal if it was set to another one."""
    sigs = [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2]
    extra = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    if isinstance(extra, signal.Signals) and extra not in sigs:
        sigs.append(extra)
    return tuple(sigs)


@dataclass
class HandBack:
    """What happened to the job after it stopped: `state` for status.json, `requeue` a note for people."""

    state: str  # preempted | cancelled
    requeue: str


_JOB_GUARD: PreemptionGuard | None = None


def job_guard() -> PreemptionGuard:
    """The process's guard: a launcher may install it as soon as the job's process starts (before configs are
    loaded and torch is imported), so that a signal in that window is noted too; the job then uses the same one."""
    global _JOB_GUARD
    if _JOB_GUARD is None:
        _JOB_GUARD = PreemptionGuard()
    return _JOB_GUARD


class PreemptionGuard:
    """Install once per job (`with job_guard() as guard:`); `received` is the first signal's name."""

    def __init__(self):
        self.received: str | None = None
        self.received_at: float | None = None  # when this process first learnt of the stop (time.time())
        self.previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> PreemptionGuard:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        global _JOB_GUARD
        self.restore()
        if _JOB_GUARD is self:  # the next job in this process (basic launcher, joblib worker) starts afresh
            _JOB_GUARD = None

    def install(self) -> None:
        """(Re)install the handlers; the first install remembers the handlers before it (submitit's, Python's).
        Lightning installs its own at the start of `fit`, so training calls this again."""
        for s in preemption_signals():
            before = signal.signal(s, self._handle)
            if s not in self.previous:
                self.previous[s] = before

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        self.note(signal.Signals(signum).name)

    def note(self, name: str) -> None:
        """Record a stop: a signal caught here, or one another rank caught (`name` is a signal's name)."""
        if self.received is None:
            self.received, self.received_at = name, time.time()

    def stop_requested(self) -> bool:
        return self.received is not None

    def code(self) -> int:
        """This process's stop as a number the ranks exchange: the signal's number, or 0."""
        sig = getattr(signal, self.received, None) if self.received else None
        return int(sig) if isinstance(sig, signal.Signals) else (int(signal.SIGTERM) if self.received else 0)

    def seconds_since_signal(self) -> float | None:
        return None if self.received_at is None else time.time() - self.received_at

    def hand_back(self, requeue: bool = True, max_requeues: int = 20) -> HandBack:
        """After the stop was recorded: requeue the job if the signal asks for it. May not return: submitit's
        handler exits the process after requeueing (SystemExit), which must propagate."""
        sig = self.received
        job = slurm.slurm_job_id()
        if sig == TERM or sig is None:
            state = slurm.accounting_state(job) if job else None
            if state == "CANCELLED":
                return HandBack("cancelled", f"not requeued: SLURM job {job} was cancelled")
            return HandBack("preempted", "not requeued: SIGTERM" + (f" (SLURM state {state})" if state else ""))
        signum = getattr(signal, sig, None) if sig.startswith("SIG") else None
        previous = self.previous.get(signum) if isinstance(signum, signal.Signals) else None
        if callable(previous):  # submitit's checkpoint_and_try_requeue: requeues and exits, or raises
            try:
                previous(signum, None)
            except Exception as e:  # e.g. submitit's UncompletedJobError: timed out too many times
                return HandBack("preempted", f"not requeued by submitit: {e}")
            return HandBack("preempted", f"not requeued: the {sig} handler before rfsweep's declined")
        if not job:
            return HandBack("preempted", f"not requeued: {sig} outside SLURM")
        if not requeue:
            return HandBack("preempted", "not requeued: cluster.requeue=false")
        if slurm.restart_count() >= max_requeues:
            return HandBack("preempted", f"not requeued: {slurm.restart_count()} restarts reached "
                                         f"cluster.max_requeues={max_requeues}")
        return HandBack("preempted", slurm.requeue(job))
