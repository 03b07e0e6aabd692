"""`python -m rfsweep`: the composition root. One job per config (`rfsweep.job`); a single run exits with the job's
code, while in a multirun every job returns its code to Hydra so that one job's failure never stops the others
(the sweep's summary and exit status come from `rfsweep.cluster.summary`)."""

from __future__ import annotations

import sys

from omegaconf import DictConfig


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def main(cfg: DictConfig) -> int:
    from rfsweep.job import execute

    code = execute(cfg)
    if code and not is_multirun():
        sys.exit(code)
    return code
