"""``dr_exp results``: Parquet files, the best rows by a metric, and sweeps side by side,
from real sweeps run by real workers."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_app, run_cli
from manage_helpers import MANAGED, assert_one_line_error

WORKERS = ("hydra/launcher=dr_exp", "hydra.launcher.workers=2")


@pytest.fixture
def sweeps(tmp_path: Path, db_path: Path) -> Path:
    """Sweep 'small' (lr 0.01, 0.1 x seeds 0, 1) and sweep 'big' (lr 0.5 and 'huge', which
    fails: lr*10 of a string), in two folders; acc = lr * 10 + seed, loss = 1 - lr."""
    run_app(
        MANAGED, "-m", "lr=0.01,0.1", "seed=0,1", *WORKERS, "hydra.sweep.dir=small", cwd=tmp_path
    )
    big = ("-m", "lr=0.5,huge", "seed=0,1", *WORKERS, "hydra.sweep.dir=big")
    run_app(MANAGED, *big, cwd=tmp_path, check=False)
    return tmp_path


def table(*args: str, cwd: Path) -> list[dict]:
    return json.loads(run_cli("results", *args, "--format", "json", cwd=cwd).stdout)


def test_parquet_holds_the_same_table(sweeps: Path) -> None:
    out = sweeps / "results.parquet"
    proc = run_cli("results", "--format", "parquet", "-o", str(out), cwd=sweeps)
    assert proc.stdout == "" and f"8 rows written to {out}" in proc.stderr
    df = pd.read_parquet(out)
    assert len(df) == 8 and list(df.columns) == list(table(cwd=sweeps)[0])
    by_id = df.set_index("job_id")
    assert by_id.loc[1, "status"] == "completed" and by_id.loc[1, "acc"] == pytest.approx(0.1)
    # lr mixes numbers and the text 'huge': a Parquet column has one type, so it is text
    assert sorted(set(df["lr"])) == ["0.01", "0.1", "0.5", "huge"]
    assert sorted(df[df["lr"] == "huge"]["status"]) == ["failed", "failed"]

    piped = subprocess.run(
        [sys.executable, "-m", "dr_exp", "results", "--format", "parquet", "-o", "-"],
        capture_output=True,
        cwd=sweeps,
    )
    assert piped.returncode == 0 and piped.stdout[:4] == b"PAR1"
    assert len(pd.read_parquet(io.BytesIO(piped.stdout))) == 8


def test_parquet_refusals_write_nothing(sweeps: Path) -> None:
    before = sorted(p.name for p in sweeps.iterdir())
    needs_file = run_cli("results", "--format", "parquet", check=False, cwd=sweeps)
    assert_one_line_error(needs_file, "parquet is binary: give -o FILE")
    no_folder = run_cli("results", "--format", "csv", "-o", "/no/such/dir/r.csv", check=False)
    assert_one_line_error(no_folder, "cannot write /no/such/dir/r.csv: no folder /no/such/dir")
    assert_one_line_error(run_cli("results", "-o", str(sweeps), check=False), "is a directory")
    blocked = (
        "import sys\nsys.modules['pyarrow'] = None\nfrom dr_exp.cli import main\nmain(sys.argv[1:])"
    )
    args = ["results", "--format", "parquet", "-o", "r.parquet"]
    no_pyarrow = subprocess.run(
        [sys.executable, "-c", blocked, *args], capture_output=True, text=True, cwd=sweeps
    )
    assert_one_line_error(no_pyarrow, "pip install pyarrow (or 'dr_exp[results]')")
    primary, replica = pty.openpty()  # stdout is a terminal: no Parquet bytes on it
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dr_exp", "results", "--format", "parquet", "-o", "-"],
            stdout=replica,
            stderr=subprocess.PIPE,
            text=True,
            cwd=sweeps,
        )
    finally:
        os.close(replica)
        os.close(primary)
    assert proc.returncode == 1 and "not a terminal" in proc.stderr
    assert sorted(p.name for p in sweeps.iterdir()) == before


def test_best_rows_by_a_metric(sweeps: Path) -> None:
    (best,) = table("--best", "acc", "--max", cwd=sweeps)
    assert (best["lr"], best["seed"], best["acc"]) == (0.5, 1, pytest.approx(6.0))
    lowest = table("--best", "loss", "--top", "3", cwd=sweeps)  # --min is the default
    assert [r["loss"] for r in lowest] == pytest.approx([0.5, 0.5, 0.9])
    assert all(r["status"] == "completed" for r in lowest)  # failed jobs have no loss
    (group,) = table("--group-by", "lr", "--best", "acc", "--min", cwd=sweeps)
    assert (group["lr"], group["acc_mean"]) == (0.01, pytest.approx(0.6))
    text = run_cli("results", "--best", "acc", "--top", "2", "--max", cwd=sweeps).stdout
    assert len(text.splitlines()) == 3 and "6.0" in text.splitlines()[1]  # a header, 2 rows
    for args, needle in [
        (["--best", "nope"], "no metric 'nope'; columns:"),
        (["--top", "2"], "--top, --min and --max go with --best METRIC"),
        (["--max"], "--top, --min and --max go with --best METRIC"),
        (["--best", "acc", "--top", "0"], "0 is not in the range x>=1"),
    ]:
        assert_one_line_error(run_cli("results", *args, check=False, cwd=sweeps), needle)


def test_sweeps_side_by_side(sweeps: Path) -> None:
    both = table("--sweep", "small", "--sweep", "big", cwd=sweeps)
    assert [r["sweep"] for r in both] == ["small"] * 4 + ["big"] * 4
    assert list(both[0])[:3] == ["sweep", "job_id", "status"]
    assert {r["lr"] for r in both if r["sweep"] == "big"} == {0.5, "huge"}
    best = table("--sweep", "small", "--sweep", "big", "--best", "acc", "--max", cwd=sweeps)
    assert [(r["sweep"], r["lr"], r["seed"]) for r in best] == [("small", 0.1, 1), ("big", 0.5, 1)]
    grouped = table("--sweep", "small", "--sweep", "big", "--group-by", "sweep", cwd=sweeps)
    counts = {g["sweep"]: (g["jobs"], g["completed"]) for g in grouped}
    assert counts == {"small": (4, 4), "big": (4, 2)}
    one = table("--sweep", "small", cwd=sweeps)  # one folder: the table as it always was
    assert "sweep" not in one[0] and len(one) == 4
