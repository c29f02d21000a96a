"""Nothing runs unless its submitter signed it: rows tampered with through plain sqlite3
run no code and upload nothing, and a worker leaves other keys' jobs alone."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import ROOT, run_app, run_cli
from manage_helpers import PROJECT
from test_worker import jobs

APP = ROOT / "tests" / "apps" / "app.py"
SYNC_APP = ROOT / "tests" / "apps" / "sync_app.py"
NOT_SIGNED = "not signed by a key this worker holds"


def queue(tmp_path: Path, *overrides: str, app: Path = APP) -> None:
    run_app(app, "-m", *overrides, "hydra/launcher=dr_exp", "hydra.launcher.wait=false",
            "hydra.launcher.workers=0", cwd=tmp_path)  # fmt: skip


def sql(db_path: Path, statement: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute(statement, params)
    conn.commit()
    conn.close()


def evil_module(folder: Path, name: str, marker: Path) -> None:
    """A module that leaves ``marker`` behind if anything ever imports it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\ndef train(*a, **k):\n    return 1\n"
    )


def test_a_tampered_trainer_sweep_runs_nothing(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project)
    where = ("--base-path", str(project), "--experiment", "e")
    run_cli(*where, "submit", "--config", "baseline.yaml", "--seed", "0")
    marker, evil = tmp_path / "pwned", tmp_path / "evil"
    evil_module(evil, "evil", marker)
    db = project / ".dr_exp" / "jobs.db"
    spec = json.dumps({"config": str(project / "configs/experiment/baseline.yaml"),
                       "trainer": "evil:train", "project": None})  # fmt: skip
    sql(db, "UPDATE sweeps SET spec = ?, sys_path = ?", (spec, json.dumps([str(evil)])))
    run_cli(*where, "worker", "--idle-timeout", "0.5")
    (row,) = jobs(db)
    assert row["status"] == "failed" and NOT_SIGNED in row["error"]
    assert not marker.exists()


def test_a_sweeps_sys_path_cannot_shadow_modules(tmp_path: Path, db_path: Path) -> None:
    queue(tmp_path, "x=1")
    marker, evil = tmp_path / "pwned", tmp_path / "evil"
    evil_module(evil, "omegaconf", marker)  # shadows a module every job imports
    sql(db_path, "UPDATE sweeps SET sys_path = ?", (json.dumps([str(evil)]),))
    run_cli("worker", "--idle-timeout", "0.5")
    (row,) = jobs(db_path)
    assert row["status"] == "failed" and NOT_SIGNED in row["error"]
    assert not marker.exists()


def test_a_jobs_overrides_cannot_be_rewritten(tmp_path: Path, db_path: Path) -> None:
    secret, stolen = tmp_path / "id_rsa", tmp_path / "stolen"
    secret.write_text("private")
    queue(tmp_path, "x=1,2")
    # Apps build objects from their config; hydra's instantiate blocklist allows copyfile.
    evil = ["+obj._target_=shutil.copyfile", f"+obj.src={secret}", f"+obj.dst={stolen}"]
    sql(db_path, "UPDATE jobs SET overrides = ? WHERE id = 1", (json.dumps(evil),))
    sql(db_path, "UPDATE jobs SET signature = 'not-a-signature' WHERE id = 2")  # malformed
    run_cli("worker", "--idle-timeout", "0.5")
    rows = jobs(db_path)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(NOT_SIGNED in r["error"] and "\n" not in r["error"] for r in rows)
    assert not stolen.exists()


def test_a_tampered_sync_entry_uploads_nothing(tmp_path: Path, db_path: Path) -> None:
    dest, elsewhere, marker = tmp_path / "dest", tmp_path / "elsewhere", tmp_path / "pwned"
    run_app(SYNC_APP, "-m", "x=1", "hydra/launcher=dr_exp", f"hydra.launcher.sync.dest={dest}",
            "hydra.launcher.sync.background=false", "hydra.launcher.workers=1",
            "hydra.launcher.idle_timeout=1", cwd=tmp_path)  # fmt: skip
    queue_db = db_path.parent / ".sync_queue.db"
    script = tmp_path / "rsh.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    options = json.dumps({"options": {}, "rsync_args": ["-e", str(script)], "bwlimit": 0,
                          "background": False}, sort_keys=True)  # fmt: skip
    sql(queue_db, "UPDATE targets SET dest = ?, options = ?", (f"me@host:{elsewhere}", options))
    proc = run_cli("sync", "run", "--once", check=False)
    assert not marker.exists() and not dest.exists() and not elsewhere.exists()
    status = json.loads(run_cli("sync", "status", "--format", "json").stdout)
    (folder,) = status["folders"]
    assert folder["state"] == "failing" and "not signed by a key" in folder["last_error"]
    assert proc.returncode in (0, 1)


def test_another_keys_jobs_stay_pending_untouched(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue(tmp_path, "x=1,2")
    before = [(r["status"], r["attempts"]) for r in jobs(db_path)]
    monkeypatch.setenv("DR_EXP_SECRET_KEY_FILE", str(tmp_path / "someone-else.key"))
    run_cli("worker", "--idle-timeout", "0.5")
    assert [(r["status"], r["attempts"]) for r in jobs(db_path)] == before == [("pending", 0)] * 2


def _first_use(path: str, out: str) -> None:
    os.environ["DR_EXP_SECRET_KEY_FILE"] = path
    from dr_exp import signing

    Path(out).write_text(signing.private_key().id)


def test_concurrent_first_uses_share_one_key(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "secret.key"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_first_use, args=(str(path), str(tmp_path / f"{i}.id")))
             for i in range(8)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len({(tmp_path / f"{i}.id").read_text() for i in range(8)}) == 1
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret.key"]  # no leftovers


def test_a_key_others_can_read_is_refused(tmp_path: Path, db_path: Path) -> None:
    key = Path(os.environ["DR_EXP_SECRET_KEY_FILE"])
    queue(tmp_path, "x=1")
    key.chmod(0o644)
    proc = run_cli("worker", "--idle-timeout", "0.5", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "has mode 0644" in line and "chmod 600" in line
    refused = run_app(APP, "-m", "x=2", "hydra/launcher=dr_exp", cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "has mode 0644" in refused.stderr
    assert [r["overrides"] for r in jobs(db_path)] == [["x=1"]]  # nothing written
