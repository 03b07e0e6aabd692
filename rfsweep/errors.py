"""Every error a user can cause, in one leaf module (it imports nothing of rfsweep): a bad config value, data, a
checkpoint or results file, missing weights, a run folder another process holds. An entry point turns a `UserError`
into one line, `error: <message>`, and exit status 2; the message names the key or file and what is allowed.

Each class keeps the built-in base it always had (ValueError or RuntimeError), so code that catches those still does.
"""

from __future__ import annotations


class UserError(Exception):
    """Input the user can fix; said in one line, before any compute where it can be known then."""


class ConfigError(UserError, ValueError):
    """A config value out of range, a key that does not exist or moved, keys that disagree."""


class VariantError(ConfigError):
    """A formulation variant the grammar does not know (rfsweep.formulations.variants)."""


class DataError(UserError, ValueError):
    """A data set or pre-encoded folder that is missing, incomplete or encoded otherwise than the config says."""


class ResultsError(UserError, ValueError):
    """A results file that is missing, corrupt or of another schema."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read; the message names the file."""


class WeightsUnavailable(UserError, RuntimeError):
    """Pretrained weights (text encoders, autoencoder, SD3) that are not on this machine."""


class EvaluatorUnavailable(UserError, RuntimeError):
    """The evaluator's weights cannot be loaded here (offline, not cached)."""


class LeaseHeld(UserError, RuntimeError):
    """Another live process trains this run folder."""


def one_line(e: BaseException) -> str:
    """What an entry point prints for a user error: `error: <first line>` (a config error already says so)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if text.startswith("error:") else f"error: {text}"
