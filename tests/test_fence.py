"""The run folder's write fence and the lease it reads (rfsweep.fence, rfsweep.cluster.lease): every atomic write
under a run folder asks the fence right before its rename; the lease's heartbeat never writes over a lease it could
not read; a hard link whose reply was lost is recognised by its token; a stale lease is taken aside, never over a
fresh one."""

from __future__ import annotations

import json
import os
import time

import pytest

from rfsweep.atomic import atomic_write
from rfsweep.cluster.lease import Lease, LeaseHeld, read_lease
from rfsweep.fence import Fence, LeaseLost, fenced, permits


class _Lease:
    def __init__(self, ours: bool):
        self.ours = ours

    def confirm(self) -> bool:
        return self.ours


def test_an_atomic_write_in_a_lost_folder_raises_and_keeps_the_old_file(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    (run / "sub").mkdir(parents=True)
    (run / "sub" / "status.json").write_text("old")
    lease = _Lease(True)
    with fenced(Fence(run, lease)) as fence:
        with atomic_write(run / "sub" / "status.json", "w") as f:
            f.write("new")
        assert (run / "sub" / "status.json").read_text() == "new"
        lease.ours = False
        with pytest.raises(LeaseLost, match="taken over"):
            with atomic_write(run / "sub" / "status.json", "w") as f:
                f.write("newer")
        assert (run / "sub" / "status.json").read_text() == "new" and not permits(run / "metrics.csv")
        assert fence.lost and not [p for p in (run / "sub").iterdir() if p.name != "status.json"]  # no temp left
        with atomic_write(other / "x", "w") as f:  # outside the fenced folder: not asked
            f.write("ok")
    with atomic_write(run / "sub" / "status.json", "w") as f:  # outside the block: nothing is fenced
        f.write("after")


def test_the_heartbeat_never_writes_over_a_lease_it_could_not_read(tmp_path):
    """A lease another host is renaming in reads torn on NFS: renewing it would overwrite the new holder."""
    with Lease(tmp_path, timeout_s=5) as lease:  # a beat every 0.5 s
        (tmp_path / "lease.json").write_text('{"token": "abc", "ho')  # torn
        time.sleep(1.6)  # three beats
        assert (tmp_path / "lease.json").read_text() == '{"token": "abc", "ho'
        assert not lease.lost.is_set()
        other = {"token": "new-holder", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
        (tmp_path / "lease.json").write_text(json.dumps(other))
        time.sleep(1.2)
        assert lease.lost.is_set() and read_lease(tmp_path)["token"] == "new-holder"


def test_a_link_whose_reply_was_lost_is_recognised_by_its_token(tmp_path, monkeypatch):
    real_link = os.link

    def link_then_lose_the_reply(src, dst):
        real_link(src, dst)
        raise FileExistsError(dst)  # NFS: the retransmitted LINK finds the file the first one made

    monkeypatch.setattr(os, "link", link_then_lose_the_reply)
    with Lease(tmp_path, timeout_s=600) as lease:
        assert read_lease(tmp_path)["token"] == lease.token


def test_a_stale_lease_is_taken_aside_and_a_fresh_one_renamed_by_mistake_is_put_back(tmp_path):
    stale = {"token": "dead", "host": "elsewhere", "pid": 1, "heartbeat": 0}
    (tmp_path / "lease.json").write_text(json.dumps(stale))
    with Lease(tmp_path, timeout_s=600) as lease:  # stale: taken over
        assert read_lease(tmp_path)["token"] == lease.token
    # between our read of the stale lease and our rename, another taker linked its fresh lease in
    fresh = {"token": "fresh", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    (tmp_path / "lease.json").write_text(json.dumps(fresh))
    late = Lease(tmp_path, timeout_s=600)
    with pytest.raises(LeaseHeld, match="just taken over"):
        late._take_aside(stale)
    assert read_lease(tmp_path)["token"] == "fresh"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lease.json"]
