"""The commands of ``python -m analysis``, one module per command or group of related commands.

`analysis.__main__` builds the parser from `analysis.commands.options` (light: argparse and the standard library)
and imports a command's module only when that command runs, so ``--help`` loads no pandas, torch or matplotlib.

- `options`: the options several commands share, each defined once; the output-folder rule; `PAPER_TABLE1`.
- `sweep_rows`: a sweep's rows as the commands read them (``--also`` pooled), and the evidence banks they need.
- `rank_table`: ``rank-table``: Table 1, Table 2, Fig. 3, rank intervals, Friedman's test, the W&B analysis run.
- `ema_best`: ``rank-table --ema best``: every run at its best post-hoc EMA length.
- `comparisons`: ``correlate``, ``compare``, ``power``.
- `run_status`: ``status``.
- `curve_figures`: ``fig4``, ``scaling``, ``formulations``.
- `wandb_commands`: ``wandb-dashboard``, ``wandb-sync``.
"""
