"""After training: the captioned sample grid, then the paper's evaluation (Sec. 5.1) written as `results.csv` and
logged to the job's W&B run.

Joins the trained module (sampling) to the evaluator and the results schema; each piece stays ignorant of the others:
`rfsweep.evaluation.protocol.evaluate` only sees a `sample_fn(weights, steps, cfg, captions, seeds)`. Each setting's
per-sample evidence goes to the run's evidence bank (`rfsweep.evaluation.bank`) before its results row.
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rfsweep import runfolder
from rfsweep.atomic import atomic_write
from rfsweep.data import build_dataset
from rfsweep.errors import ResultsError
from rfsweep.evaluation.bank import BANK_FILE, EvidenceBank
from rfsweep.evaluation.evaluators import build_evaluator
from rfsweep.evaluation.grids import save_captioned_grid
from rfsweep.evaluation.progress import EvalProgress
from rfsweep.evaluation.protocol import EvaluationStopped, eval_prompts, evaluate  # noqa: F401 (the job catches it)
from rfsweep.evaluation.reference import real_reference, reference_stats
from rfsweep.host_memory import free_host_bytes
from rfsweep.results import (
    EVALUATOR,
    FIT_ERROR,
    REAL,
    REAL_VARIANT,
    RESULTS_FILE,
    of_evaluator,
    posthoc_sigma_rel,
    posthoc_weights,
    read_results,
    setting_name,
    write_results,
)
from rfsweep.train.ema import make_ema
from rfsweep.train.posthoc_ema import FOLDER as POSTHOC_FOLDER
from rfsweep.train.posthoc_ema import fit_plan, reconstruct_many

GRID_SIZE = 64  # samples per evaluation setting saved (eval_samples/) and shown in W&B


@contextmanager
def sampling_precision(cfg: DictConfig, device: torch.device):
    """On a GPU with eval.bf16: bf16 autocast and TF32 matmuls while sampling (the network evaluations dominate
    evaluation time); on a CPU: as is."""
    if device.type != "cuda" or not cfg.eval.get("bf16", True):
        yield
        return
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def held_out_captions(cfg: DictConfig, n: int) -> list[str]:
    ds = build_dataset(cfg.data.name, "test", cfg.data.resolution, cfg.data.seed, cfg.data.path)
    return [ds[i]["caption"] for i in range(min(n, len(ds)))]


def evaluator_kwargs(cfg: DictConfig) -> dict:
    """`eval.evaluator_args` as the evaluator's keyword arguments (none when unset)."""
    e = cfg.eval
    return OmegaConf.to_container(e.evaluator_args, resolve=True) if e.get("evaluator_args") else {}


def configured_evaluator(cfg: DictConfig):
    """The config's evaluator, on the CPU (built before training so missing weights fail before any step)."""
    return build_evaluator(cfg.eval.evaluator, device="cpu", **evaluator_kwargs(cfg))


def write_samples(cfg: DictConfig, module, run_dir: Path) -> tuple[Path, list[str]]:
    """`samples.png` (EMA weights, the sampler config): the first held-out captions, each under its sample, and
    `samples.txt` with the captions (atomic writes: a folder another process took over is not written, LeaseLost)."""
    s = cfg.sampler
    captions = held_out_captions(cfg, s.n_grid)
    with sampling_precision(cfg, module.device):
        images = module.generate(captions, steps=s.steps, guidance=s.guidance, shift=s.shift,
                                 seed=cfg.eval.seed).float()
    with atomic_write(run_dir / "samples.txt", "w") as f:
        f.write("\n".join(captions) + "\n")
    return save_captioned_grid(images, captions, run_dir / "samples.png", nrow=8), captions


def _earlier_rows(run_dir: Path, step: int, evaluator_id: str) -> list[dict]:
    """Rows of this checkpoint's evaluation by this evaluator written before a pre-emption (another checkpoint's or
    another evaluator's rows are dropped: evaluated again)."""
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        return []
    try:
        df = read_results(path)
    except ResultsError:
        return []
    df = of_evaluator(df[(df["ckpt_step"] == step) | (df["weights"] == REAL)], evaluator_id)
    return [] if (df["weights"] != REAL).sum() == 0 else df.to_dict("records")


def _earlier_bank(run_dir: Path, step: int, evaluator_id: str, reference) -> EvidenceBank:
    """The bank of this checkpoint's evaluation by this evaluator written before a pre-emption, else a new one (a
    damaged bank is said in one line and started afresh: its settings are evaluated again)."""
    try:
        bank = EvidenceBank.load(run_dir / BANK_FILE)
    except ResultsError as e:
        print(f"warning: {e}; evaluating its settings again", file=sys.stderr, flush=True)
        bank = None
    if bank is None or bank.evaluator_id != evaluator_id or bank.ckpt_step != step:
        bank = EvidenceBank(evaluator_id, step, torch.from_numpy(reference.features), {})
    return bank


def evaluated_weights(cfg: DictConfig) -> list[str]:
    """The weights evaluation samples: eval.weights, then each post-hoc EMA length of eval.ema_lengths."""
    return [*cfg.eval.weights, *(posthoc_weights(s) for s in cfg.eval.ema_lengths)]


class PostHocNets:
    """The networks of post-hoc EMA weights (phema<sigma_rel>), rebuilt from the run's snapshots at the evaluated step
    when first sampled: the lengths of `names` (those still to evaluate) in one pass over the snapshots
    (`reconstruct_many`), as many at a time as half the free host memory holds (one float32 model each; the rest in
    later passes); one network held at a time (evaluation goes weights by weights). `fit_error(name)`: the rebuilt
    profile's fit error (from the snapshots' headers for a length not rebuilt here). Other weights pass through."""

    def __init__(self, module, run_dir: Path, step: int, names=()):
        self.module, self.folder, self.step = module, runfolder.checkpoint_dir(run_dir) / POSTHOC_FOLDER, int(step)
        self.order = [n for n in dict.fromkeys(names) if posthoc_sigma_rel(n) is not None]
        self.states: dict[str, dict] = {}
        self.infos: dict[str, dict] = {}
        self.rebuilt: set[str] = set()
        self.name, self.net = None, None

    def _per_pass(self) -> int:
        model = sum(t.numel() * 4 for t in self.module.net.state_dict().values())  # one float32 model per length
        return max(1, free_host_bytes() // 2 // max(model, 1))

    def _rebuild(self, weights: str) -> None:
        rest = [n for n in self.order if n not in self.rebuilt and n != weights]
        group = [weights, *rest[:self._per_pass() - 1]]
        by_sigma = {posthoc_sigma_rel(n): n for n in group}
        self.states = {}  # the previous pass's lengths are evaluated: evaluation goes weights by weights
        states, infos = reconstruct_many(self.folder, list(by_sigma), self.step)
        if len(self.order) > 1:
            print(f"post-hoc EMA: rebuilt {', '.join(group)} in one pass over the snapshots "
                  f"({len(rest) - (len(group) - 1)} lengths left for later passes)", file=sys.stderr, flush=True)
        for sigma_rel, name in by_sigma.items():
            self.states[name], self.infos[name] = states[sigma_rel], infos[sigma_rel]
        self.rebuilt.update(group)

    def fit_error(self, weights: str) -> float | None:
        sigma_rel = posthoc_sigma_rel(weights)
        if sigma_rel is None:
            return None
        if weights not in self.infos:  # evaluated before a pre-emption: its fit from the headers, no tensor read
            self.infos[weights] = fit_plan(self.folder, [sigma_rel], self.step)[4][sigma_rel]
        return self.infos[weights]["fit_error"]

    def get(self, weights: str):
        if posthoc_sigma_rel(weights) is None:
            return weights
        if self.name != weights:
            if weights not in self.states:
                self._rebuild(weights)
            self.net = None
            net = make_ema(self.module.net)
            net.load_state_dict(self.states.pop(weights))
            self.name, self.net = weights, net.to(self.module.device)
        return self.net


def evaluate_run(cfg: DictConfig, module, run_dir: Path, info: dict, settings, evaluator, stop=None,
                 tracker=None, out_dir: Path | None = None) -> list[dict]:
    """Evaluate and write results.csv after every setting (a pre-emption keeps the finished settings, and a rerun
    evaluates only the rest); `stop()` is asked between settings (EvaluationStopped ends early); every write asks the
    run folder's write fence (another process holds it now: LeaseLost, nothing written). `out_dir`:
    where results, evidence and sample grids go (default the run folder; a race's rung: rungs/<step>/)."""
    e, meta = cfg.eval, module.meta
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    evaluator.to(module.device)
    ref = reference_stats(evaluator, cfg.data.name, "test", cfg.data.resolution, e.n_samples, cfg.data.seed,
                          cache_dir=Path(cfg.paths.cache), data_path=cfg.data.path)
    prompts = held_out_captions(cfg, e.n_samples)
    shift = cfg.sampler.shift
    common = {"variant": meta.variant, "family": meta.family, "dataset": meta.dataset, "backbone": meta.backbone,
              "ckpt_step": info["step"], "val_loss": info["val_loss"], "seed": meta.seed, "run_dir": str(run_dir),
              EVALUATOR: evaluator.id}
    bank = _earlier_bank(out, info["step"], evaluator.id, ref)
    rows = [r for r in _earlier_rows(out, info["step"], evaluator.id)  # a setting without its evidence: again
            if r["weights"] == REAL or bank.has(r["weights"], r["steps"], r["cfg"])]
    if bank.real is None or not any(r["weights"] == REAL for r in rows):  # the row, and its evidence in the bank
        real, bank.real = real_reference(evaluator, ref, cfg.data.name, cfg.data.resolution, e.n_samples,
                                         cfg.data.seed, data_path=cfg.data.path)
        rows = [r for r in rows if r["weights"] != REAL]
        rows.append({**common, **real, "variant": REAL_VARIANT, "family": REAL, "ckpt_step": 0, "val_loss": None})
        bank.save(out / BANK_FILE)
    done = [(r["weights"], r["steps"], r["cfg"]) for r in rows if r["weights"] != REAL]

    weights = evaluated_weights(cfg)

    def sample_fn(weights: str, steps: int, guidance: float, captions: list[str], seeds: list[int]) -> torch.Tensor:
        with sampling_precision(cfg, module.device):
            return module.generate(captions, steps=steps, guidance=guidance, shift=shift, seed=seeds,
                                   weights=rebuilt.get(weights)).float()

    skip = {(w, int(s), round(float(c), 6)) for w, s, c in done}  # as `evaluate` matches them
    todo = [(w, int(s), float(c)) for w in weights for s, c in settings
            if (w, int(s), round(float(c), 6)) not in skip]
    rebuilt = PostHocNets(module, run_dir, info["step"], [w for w, _, _ in todo])
    for r in rows:  # rows of a file written before rows carried their fit error
        value = r.get(FIT_ERROR)
        if posthoc_sigma_rel(r["weights"]) is not None and (value is None or not math.isfinite(value)):
            r[FIT_ERROR] = rebuilt.fit_error(r["weights"])
    progress = EvalProgress(todo, out=lambda line: print(line, flush=True))

    def bank_it(weights: str, steps: int, guidance: float, evidence) -> None:  # before its results row
        bank.add(weights, steps, guidance, evidence)
        bank.save(out / BANK_FILE)

    def keep(row: dict) -> None:
        err = rebuilt.fit_error(row["weights"])
        rows.append({**common, **row, **({FIT_ERROR: err} if err is not None else {})})
        write_results(out / RESULTS_FILE, rows)
        progress.finish()

    evaluate(sample_fn, evaluator, prompts, ref, settings=settings, weights=tuple(weights), n_samples=e.n_samples,
             batch_size=e.batch_size, seed=e.seed, grid_dir=out / "eval_samples", grid_size=GRID_SIZE, stop=stop,
             done=done, on_row=keep, on_setting=progress.start, on_evidence=bank_it)
    rows = [r for r in rows if r["weights"] != REAL] + [r for r in rows if r["weights"] == REAL]  # real images last
    write_results(out / RESULTS_FILE, rows)
    if tracker is not None:
        shown = eval_prompts(prompts, e.n_samples)[:GRID_SIZE]
        grids = {setting_name(r["weights"], r["steps"], r["cfg"]): out / "eval_samples" /
                 f"{setting_name(r['weights'], r['steps'], r['cfg'])}.png" for r in rows if r["weights"] != REAL}
        tracker.log_evaluation(rows, {k: (p, shown) for k, p in grids.items()}, info)
    return rows
