"""What W&B wrote for an offline run, read from its `run-<id>.wandb` file: the records wandb-core appended, decoded
with wandb's own protobuf schema (`wandb.proto.wandb_internal_pb2.Record`).

wandb >= 0.20 no longer ships a Python reader for these files (its Go core writes and syncs them), so the framing is
read here: a 7-byte file header (":W&B", magic 0xBEE1, version), then LevelDB-log blocks of 32 KiB whose records
carry a 7-byte header (CRC32, length, type FULL / FIRST / MIDDLE / LAST). Test infrastructure, not part of rfsweep.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

BLOCK, HEADER = 32768, 7


def records(path: str | Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        if kind == 0:  # zero padding up to the end of the block
            pos += (BLOCK - pos % BLOCK) % BLOCK
            continue
        if kind in (2, 3):  # FIRST / MIDDLE of a record that spans blocks
            parts = chunk if kind == 2 else parts + chunk
            continue
        record = pb.Record()
        record.ParseFromString(parts + chunk if kind == 4 else chunk)
        parts = b""
        yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """A run as its file tells it: id, group, job type, config, the final summary, history rows, artifacts, exit."""

    id: str = ""
    group: str = ""
    job_type: str = ""
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    artifacts: list = field(default_factory=list)
    exit_code: int | None = None
    tags: list[str] = field(default_factory=list)


def read_run(folder: str | Path, wait: float = 60.0) -> OfflineRun:
    """An `offline-run-*` folder's run, once its file holds the exit record. wandb-core writes the file from its
    service process and may still be flushing it when `run.finish()` returns in-process (seen under CI load: a
    file without its records yet), so the reader waits up to `wait` seconds for the exit record."""
    (path,) = Path(folder).glob("run-*.wandb")
    deadline = time.monotonic() + wait
    while True:
        run = _parse(path)
        if run.exit_code is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def _parse(path: Path) -> OfflineRun:
    run = OfflineRun()
    for r in _complete_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":  # the first record, then updates: a field an update leaves empty keeps its value
            run.id, run.group = r.run.run_id or run.id, r.run.run_group or run.group
            run.job_type, run.tags = r.run.job_type or run.job_type, list(r.run.tags) or run.tags
            run.config.update({_key(i): json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "summary":
            for i in r.summary.update:
                run.summary[_key(i)] = json.loads(i.value_json)
            for i in r.summary.remove:
                run.summary.pop(_key(i), None)
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "artifact":
            run.artifacts.append(r.artifact)
        elif kind == "exit":
            run.exit_code = r.exit.exit_code
    return run


def _complete_records(path: Path):
    """The records of a file that may still be growing: a truncated last record ends the reading."""
    from google.protobuf.message import DecodeError

    try:
        yield from records(path)
    except (DecodeError, struct.error, ValueError):
        return


def offline_runs(root: str | Path) -> list[Path]:
    return sorted(Path(root).rglob("offline-run-*"))
