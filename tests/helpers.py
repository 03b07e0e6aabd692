"""Shared test helpers: tiny configs, composing, and running the CLI."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

import rfsweep.run.preflight  # noqa: F401 (registers the configs' resolvers and schema)

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")


def tiny(tmp: Path, steps: int = 8) -> list[str]:
    """Overrides for a seconds-long CPU run with the weight-free text encoder."""
    return [
        "logger=csv", "conditioning=hash", "eval=none", f"trainer.max_steps={steps}", "trainer.val_every=4",
        "trainer.ckpt_every=2", "trainer.n_val=16", "trainer.batch_size=8", "trainer.warmup_steps=2",
        "trainer.threads=1", "sampler.n_grid=4", "sampler.steps=3", "backbone=mmdit", "backbone.depth=1",
        "backbone.width=32", "backbone.heads=2", f"paths.runs={tmp}/runs", f"paths.sweeps={tmp}/multirun",
        f"paths.cache={tmp}/cache",
    ]


def compose_cfg(overrides: list[str], run_dir: str = "/tmp/rfsweep-test-run"):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[*overrides, f"run_dir={run_dir}"])


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


_PORTS = itertools.count()


def rendezvous_port() -> int:
    """A rendezvous port of this test process's own: a range per xdist worker (8 ranges, modulo) and pytest process
    between 20000 and 32000, below Linux's ephemeral ports (32768 on), where a port bound to 0 and released (as
    Lightning and torch pick one) can be handed to another worker at the same time (EADDRINUSE, seen under xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    slot = (int(worker) % 8 if worker.isdigit() else 0) * 1500 + (os.getpid() % 3) * 500
    return 20000 + slot + next(_PORTS) % 500


def _cli_env(args: list[str]) -> dict:
    """A run of several devices through Lightning's own launcher picks its rendezvous port by binding port 0 and
    releasing it; two test workers doing so at once can be handed the same port. Such runs get a `rendezvous_port`; also
    when the test process's environment holds MASTER_PORT (Lightning's LightningEnvironment writes a free port there
    in a test that ran a strategy in-process; handed on later, that port can be taken: EADDRINUSE, seen in CI)."""
    env = _env()
    several = any(a.startswith("trainer.devices=") and a.split("=", 1)[1] not in ("1", "auto") for a in args)
    if several and not any("launcher=slurm" in a for a in args):
        env["MASTER_PORT"] = str(rendezvous_port())
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group ended meanwhile
        pass


def run_cli(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m rfsweep args` in a process group of its own: past `timeout` the whole group is killed (the ranks
    Lightning's own launcher started, SLURM's srun, the race's jobs), not only the command, whose children would go
    on and load the next tests; TimeoutExpired then carries what the command printed. Any other way out (Ctrl-C)
    kills the group too: in its own session, the command never sees the terminal's signals. `env`: variables added to
    the command's environment."""
    cmd = [sys.executable, "-m", "rfsweep", *args]
    with subprocess.Popen(cmd, cwd=ROOT, env={**_cli_env(args), **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            print(f"--- printed before the timeout of {timeout} s ---\n{out}\n{err[-20000:]}")
            raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
        except BaseException:  # Ctrl-C, pytest's own timeout: the group never reaches the ranks it started
            _kill_group(proc)
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def popen_cli(args: list[str], nice: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rfsweep", *args], cwd=ROOT, env=_cli_env(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)
