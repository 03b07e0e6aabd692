"""The entry points: `python -m rfsweep` (`main`: the Hydra app), and `python -m rfsweep.cli.<name>` for generate,
precompute and train_clip. They compose a config (or read arguments), call the run layer's preflight, and turn a
user error (`rfsweep.errors.UserError`) into one `error: ...` line and exit status 2."""
