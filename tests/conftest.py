import ast
import functools
import inspect
import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _environment():
    """Each test leaves os.environ as it found it (the keys it changed put back; what a module- or session-scoped
    fixture sets stays until the worker ends: such fixtures must not run a strategy in-process). What an in-process
    run sets there (Lightning's LOCAL_RANK, NODE_RANK and MASTER_* of a strategy, W&B's WANDB_SERVICE) was handed on
    to every later command of the same xdist worker: a two-device CLI run that inherits LOCAL_RANK waits in the
    rendezvous for a rank 1 nobody starts (CI of 2026-12-06, twice)."""
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


# -- the e2e marker ------------------------------------------------------------------------------------------------
# A test is end to end when it, a function of its module it calls, or a fixture of its module it uses starts a process
# (python -m ... through tests.helpers.run_cli / popen_cli, or subprocess): marked `e2e` at collection, so that
# `pytest -m "not e2e"` is the contributors' fast loop. Found from the source, so a new test needs no marker by hand.
PROCESS_CALLS = ("run_cli(", "popen_cli(", "subprocess.", "sys.executable")


@functools.lru_cache(maxsize=None)
def _functions(path: str) -> dict:
    src = open(path).read()
    return {n.name: ast.get_source_segment(src, n) for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}


def _starts_processes(path: str, name: str, seen: set) -> bool:
    funcs = _functions(path)
    if name in seen or name not in funcs:
        return False
    seen.add(name)
    body = funcs[name]
    return any(k in body for k in PROCESS_CALLS) or any(
        f"{other}(" in body and _starts_processes(path, other, seen) for other in funcs if other != name)


def pytest_collection_modifyitems(config, items):
    for item in items:
        fn = getattr(item, "function", None)
        if fn is None:
            continue
        path = inspect.getsourcefile(fn)
        seen: set = set()
        if any(_starts_processes(path, n, seen) for n in (fn.__name__, *getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.e2e)
