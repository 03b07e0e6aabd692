"""Where a W&B run goes, from the environment alone (no config): online with credentials for the configured server,
else offline; and a run folder's fixed W&B run id. The job's tracking (`rfsweep.run.tracking`) and the analysis
(`python -m analysis wandb-sync`, the study's W&B run) both read it."""

from __future__ import annotations

import hashlib
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_HOST = "https://api.wandb.ai"


def has_credentials(env=None) -> bool:
    """An API key in the environment, or a netrc entry for the configured server (`WANDB_BASE_URL`'s host)."""
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL", DEFAULT_HOST)).hostname or "api.wandb.ai"
    try:
        path = env.get("NETRC") or os.path.join(env.get("HOME", os.path.expanduser("~")), ".netrc")
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(env=None) -> str:
    """`WANDB_MODE` if set, else online with credentials and offline without."""
    env = os.environ if env is None else env
    return env.get("WANDB_MODE") or ("online" if has_credentials(env) else "offline")


def run_id(run_dir: str | Path) -> str:
    """The W&B run id of a run folder: stable across launches, so they log to one W&B run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
