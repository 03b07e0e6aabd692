"""The study in W&B: the analysis run of `rank-table --wandb`, the sweep's report built as code, and the upload of a
sweep's offline runs. Pure functions of saved results and W&B's client libraries: no model, no GPU.

- `log_study`: one run (job type `analysis`, group = the experiment) with Table 1 and Table 2 as tables, Fig. 3 (and
  Fig. 4 when the sweep has validation curves) as images, the joined results table and what the grid is missing.
- `log_ema_choice`: the run of `rank-table --ema best` (the tables at the chosen post-hoc EMA lengths, the choices).
- `build_report`: with the `wandb-workspaces` package, per dataset CLIP score against FID for every ranking setting
  (a scatter per setting, runs coloured by family), validation-loss curves grouped by family, the rank tables and
  the sample grids. Saving it needs a W&B server (`--save`); without one the object is built and described.
- `offline_run_folders` / `sync_command`: `wandb sync` over every offline run below a sweep.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pandas as pd

from analysis.figures import FAMILY_COLORS
from rfsweep.results import setting_name
from rfsweep.wandb_env import wandb_mode


def _table(df: pd.DataFrame):
    import wandb  # deferred: wandb (~0.6 s), only for a W&B run

    return wandb.Table(dataframe=df.astype(object).where(df.notna(), None))


def _open(sweep: Path, out: Path, experiment: str, kind: str, config: dict, project: str, entity: str | None):
    """The W&B run `kind` of a sweep (job type `analysis`); its id is fixed by the sweep folder and the kind, so a
    rerun updates it."""
    import wandb  # deferred: wandb (~0.6 s), only for a W&B run

    run_id = kind + "-" + hashlib.sha1(str(Path(sweep).resolve()).encode()).hexdigest()[:12]
    mode = wandb_mode()
    return wandb.init(project=project, entity=entity, id=run_id, name=f"{experiment}/{kind}", group=experiment,
                      job_type="analysis", dir=str(out), reinit="create_new",
                      mode="offline" if mode in ("offline", "dryrun") else mode,
                      resume="allow" if mode == "online" else None,
                      config={"experiment": experiment, "sweep": str(sweep), **config},
                      settings=wandb.Settings(init_timeout=30, silent=True, console="off", x_disable_stats=True))


def _close(run) -> Path:
    folder = Path(run.dir).parent
    run.finish()
    return folder


def log_study(sweep: Path, out: Path, experiment: str, table1: pd.DataFrame, table2: pd.DataFrame | None,
              results: pd.DataFrame, missing: list[str], figures: dict[str, Path], project: str = "rfsweep",
              entity: str | None = None, race: dict | None = None) -> Path:
    """Log the analysis run; returns its local folder. A raced sweep's `race` (`rank-table`): its decisions rung by
    rung (study/race: variants per rung, places, who went on, stopped, was audited) and its compute fractions."""
    import wandb  # deferred: wandb (~0.6 s), only for a W&B run

    config = {"runs": int(results["run_dir"].nunique()), "complete": not missing}
    run = _open(sweep, out, experiment, "analysis", config, project, entity)
    values = {"study/table1": _table(table1), "study/results": _table(results),
              "study/missing": wandb.Table(columns=["missing"], data=[[m] for m in missing])}
    if table2 is not None and len(table2):
        values["study/table2"] = _table(table2)
    for name, path in figures.items():
        values[f"study/{name}"] = wandb.Image(str(path), caption=name)
    summary = {"study/missing_count": len(missing), "study/variants": int(len(table1))}
    if race is not None:
        values["study/race"] = _table(race["decisions"])
        per_rung = race["decisions"].groupby("rung")["decision"]
        summary["study/race_alive_per_rung"] = [int(n) for n in per_rung.size()]
        summary["study/race_stopped_per_rung"] = [int((d == "stopped").sum()) for _, d in per_rung]
        if "compute" in race:
            summary.update({f"study/race_fraction_{k}": v for k, v in race["compute"]["fraction"].items()})
    run.log(values)
    run.summary.update(summary)
    return _close(run)


def log_ema_choice(sweep: Path, out: Path, experiment: str, tables: dict[str, pd.DataFrame], figure: Path,
                   select: str | None, project: str = "rfsweep", entity: str | None = None) -> Path:
    """Log `rank-table --ema best` as its own analysis run (`<experiment>/analysis-ema-best`): Table 1 at the chosen
    post-hoc EMA lengths and of the fixed EMA on the same prompts (with intervals), the choices, the metrics against
    sigma_rel and their figure; returns its local folder."""
    import wandb  # deferred: wandb (~0.6 s), only for a W&B run

    run = _open(sweep, out, experiment, "analysis-ema-best", {"select": select or "each run's eval.ema_select"},
                project, entity)
    run.log({**{f"ema_best/{name}": _table(t) for name, t in tables.items()},
             "ema_best/lengths_figure": wandb.Image(str(figure), caption="metrics against sigma_rel")})
    return _close(run)


def ranking_settings(manifest: dict) -> list[str]:
    """The sweep's ranking settings (weights x sampler settings), by `rfsweep.results.setting_name`."""
    return [setting_name(w, s, c) for w in manifest["weights"] for s, c in manifest["settings"]]


def build_report(entity: str, project: str, group: str, datasets: list[str], settings: list[str]):
    """The sweep's W&B report (not saved): four sections of panels over the runs of `group`."""
    import wandb_workspaces.reports.v2 as wr  # deferred: wandb-workspaces (~0.7 s), only for the report

    runs = f"Config('experiment') = '{group}'"
    colors = {wr.RunsetGroup(runset_name=d, keys=(wr.RunsetGroupKey(key=wr.Config("family"), value=f),)): c
              for d in datasets for f, c in FAMILY_COLORS.items()}
    scatter = [wr.PanelGrid(
        runsets=[wr.Runset(entity=entity, project=project, name=d, groupby=["config.family"],
                           filters=f"{runs} and Config('dataset') = '{d}'")],
        custom_run_colors={k: v for k, v in colors.items() if k.runset_name == d},
        panels=[wr.ScatterPlot(title=f"{d} {s}", x=wr.SummaryMetric(f"eval/{s}/fid"),
                               y=wr.SummaryMetric(f"eval/{s}/clip_score")) for s in settings])
        for d in datasets]
    curves = wr.PanelGrid(
        runsets=[wr.Runset(entity=entity, project=project, name="runs", filters=runs)],
        panels=[wr.LinePlot(title=f"validation loss ({w}) by family", x="trainer/global_step",
                            y=[f"val/loss_{w}"], groupby="config.family", log_y=True) for w in ("ema", "raw")])
    tables = wr.PanelGrid(
        runsets=[wr.Runset(entity=entity, project=project, name="analysis",
                           filters=f"{runs} and JobType = 'analysis'")],
        panels=[wr.WeavePanelSummaryTable(table_name=f"study/{t}") for t in ("table1", "table2", "missing")]
        + [wr.MediaBrowser(title="Fig. 3", media_keys=["study/fig3"])])
    samples = wr.PanelGrid(
        runsets=[wr.Runset(entity=entity, project=project, name="runs", filters=runs)],
        panels=[wr.MediaBrowser(title="samples", media_keys=["samples/grid", *[f"samples/{s}" for s in settings]])])
    blocks = [wr.H1("CLIP score against FID, per ranking setting"), *scatter,
              wr.H1("Validation loss"), curves, wr.H1("Rank tables"), tables, wr.H1("Samples"), samples]
    return wr.Report(entity=entity, project=project, title=f"{group}: formulation study",
                     description=f"rfsweep sweep {group}: {len(datasets)} datasets x {len(settings)} settings",
                     blocks=blocks)


def describe(report) -> str:
    """The report's sections and panels, one line each (what `--save` would create)."""
    import wandb_workspaces.reports.v2 as wr  # deferred: wandb-workspaces (~0.7 s), only for the report

    lines = [f"report {report.title!r} ({report.entity}/{report.project})"]
    for block in report.blocks:
        if isinstance(block, wr.H1):
            lines.append(f"== {block.text}")
        elif isinstance(block, wr.PanelGrid):
            sets = "; ".join(f"{r.name}: {r.filters}" for r in block.runsets)
            lines.append(f"   {len(block.panels)} panels over [{sets}]")
    return "\n".join(lines)


def offline_run_folders(sweep: str | Path) -> list[Path]:
    """Every offline W&B run below a sweep (each job's `<run>/wandb/offline-run-*`, the analysis run's)."""
    return sorted(p for p in Path(sweep).rglob("offline-run-*") if p.is_dir())


def sync_command(folders: list[Path], project: str | None = None, entity: str | None = None,
                 dry_run: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "wandb", "sync", "--yes", "--skip-synced", *(["--dry-run"] if dry_run else [])]
    cmd += ["--project", project] if project else []
    cmd += ["--entity", entity] if entity else []
    return cmd + [str(f) for f in folders]
