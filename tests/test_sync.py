"""Syncing results: the sync queue's claims, leases and generations."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dr_exp.syncq import LeaseLost, SyncQueue, Target


def test_claims_are_exclusive_leases_expire_and_rerecords_resend(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "0"
    folder.mkdir(parents=True)
    target = Target(dest=str(tmp_path / "dest"), options={}, rsync_args=[], bwlimit=0,
                    background=True)  # fmt: skip
    a = SyncQueue.open(tmp_path / "q.db")
    b = SyncQueue.open(tmp_path / "q.db")
    assert a.schema_version() == 1
    fid = a.record(str(folder), target, "out/0")
    assert a.record(str(folder), target, "out/0", since=time.time() - 60) is None  # already
    got = a.claim(fid, "a", lease_s=30)
    assert got is not None and got.target == target
    assert b.claim(fid, "b", lease_s=30) is None  # two uploaders never share a folder
    with pytest.raises(LeaseLost):
        b.renew(fid, "b", 30)
    a.renew(fid, "a", 30)
    # a is killed: once its lease runs out, b takes the folder over, and a cannot touch it.
    a.renew(fid, "a", 0.05)
    time.sleep(0.1)
    assert b.claim(fid, "b", lease_s=30) is not None
    assert not a.complete(fid, "a", {}, 0, 0)
    # The job writes more while b uploads: b's upload leaves the folder pending.
    a.record(str(folder), target, "out/0")
    assert b.complete(fid, "b", {"f": [1, 2]}, 1, 1)
    (row,) = a.folders()
    assert (row["state"], row["generation"]) == ("pending", 2)
    assert b.claim(fid, "b", lease_s=30) is not None
    assert b.complete(fid, "b", {"f": [1, 2]}, 0, 0)
    assert a.summary()["uploaded"] == 1
