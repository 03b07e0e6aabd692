"""The host memory this process may still take: the kernel's MemAvailable, capped by the memory its cgroups allow
(a SLURM job's --mem, cgroup v2 or v1). Post-hoc EMA sizes how many lengths it rebuilds in one pass by it."""

from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_room(cgroup_root: Path, self_cgroup: Path) -> float:
    """What this process's cgroup (v2, or v1's memory controller) and its ancestors still allow: the smallest of
    limit - (usage - inactive page cache) over the hierarchy; inf where none is set or the files are not there."""
    room = math.inf
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return room
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            base, limit_f, usage_f, cache_key = cgroup_root, "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):  # v1
            base, limit_f, usage_f, cache_key = (cgroup_root / "memory", "memory.limit_in_bytes",
                                                 "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        folder = base / path.lstrip("/")
        while True:
            try:
                limit = (folder / limit_f).read_text().strip()
                if limit != "max" and int(limit) < 2**60:  # v1 writes "no limit" as a huge number
                    stat = dict(ln.split() for ln in (folder / "memory.stat").read_text().splitlines())
                    used = int((folder / usage_f).read_text()) - int(stat.get(cache_key, 0))
                    room = min(room, int(limit) - used)
            except (OSError, ValueError):
                pass
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return room


def free_host_bytes(meminfo: Path = Path("/proc/meminfo"), cgroup_root: Path = Path("/sys/fs/cgroup"),
                    self_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The host memory this process may still take: MemAvailable (free plus reclaimable page cache), capped by what
    its cgroups allow (a SLURM job's --mem under cgroup v2 or v1: limit less usage less inactive page cache)."""
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return int(max(min(free, _cgroup_room(cgroup_root, self_cgroup)), 0))
