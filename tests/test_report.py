"""``dr_exp report``: one self-contained HTML file of a real sweep, opened in a real headless
Chromium with the network blocked (no name resolves, and every request would go to a
proxy that is not there), from file://.

It is built from a copy of the sweep folder with no database, as a researcher
would from a synced copy.  The browser tests skip where Chromium is missing, except
in CI (CI=true), where that fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from test_ui import (
    OFFLINE_FLAGS,
    Project,
    chrome,
    close,
    drawn_plots,
    need_ui_extra,
    outside_urls,
    requested_urls,
    screenshot,
    texts,
    visit,
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """seeds 0,1 x lr 0.1,0.2, seed 1 failing, run by real local workers."""
    need_ui_extra()
    project = Project(tmp_path_factory.mktemp("report"))
    (project.root / "fail" / "1").mkdir(parents=True)
    project.sweep(
        "seed=0,1",
        "lr=0.1,0.2",
        f"fail_if={project.root / 'fail'}",
        "hydra/launcher=dr_exp",
        "hydra.sweep.dir=grid",
        fails=True,
    )
    return project


def synced_copy(project: Project, tmp_path: Path) -> Path:
    """The sweep folder as a researcher gets it on a laptop: copied, no database."""
    copy = tmp_path / "laptop" / "grid"
    shutil.copytree(project.root / "grid", copy)
    return copy


def report(project: Project, *args: str, db: str = "", cwd: Path | None = None):
    """``dr_exp report ARGS``, with no database unless ``db`` names one."""
    env = {**os.environ, **project.env, "DR_EXP_DB": db or str(project.root / "no" / "jobs.db")}
    return subprocess.run(
        [sys.executable, "-m", "dr_exp", "report", *args],
        cwd=cwd or project.root,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def embedded_data(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', html, re.S)
    assert match, "the report has no data"
    return json.loads(match.group(1))


def test_the_report_of_a_synced_copy_opens_offline_and_draws_its_plots(
    project: Project, tmp_path: Path
) -> None:
    copy = synced_copy(project, tmp_path)
    out = tmp_path / "mail" / "report.html"
    out.parent.mkdir()
    proc = report(project, "--sweep", str(copy), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}: 4 jobs (2 failed), ")

    html = out.read_text()
    assert "<script src" not in html and 'rel="stylesheet"' not in html  # everything inline
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html)
    assert csp and "default-src 'none'" in unescape(csp.group(1))  # it may load nothing at all
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    ours = html.replace(scripts[0], "")  # plotly.js from its wheel: see test_ui's offline test
    assert "plotly.js v" in scripts[0][:200] and outside_urls(ours, "file://") == []
    data = embedded_data(html)
    assert [r["status"] for r in data["rows"]] == ["completed"] * 2 + ["failed"] * 2
    assert all(r["output_dir"].startswith(str(copy)) for r in data["rows"])

    driver = chrome(*OFFLINE_FLAGS)
    try:
        visit(
            driver,
            out.as_uri(),
            lambda: len(drawn_plots(driver)) == 5 and min(drawn_plots(driver)) > 0,
            "plots",
        )
        lines = driver.execute_script(
            "return document.querySelectorAll('[data-section=curves] .scatterlayer .trace').length"
        )
        assert lines == 4  # a learning curve per job, from its events.jsonl
        assert len(texts(driver, "[data-section=results] tbody tr")) == 4
        failures = texts(driver, "[data-section=failures] pre.error")
        assert len(failures) == 2 and all(
            "RuntimeError: seed 1 is told to fail" in f for f in failures
        )
        assert texts(driver, "[data-section=best] tbody td.best") == [
            "2",
            "1",
        ]  # acc = lr*10 + seed
        urls = requested_urls(driver)
        assert {u for u in urls if not u.startswith("data:")} == {out.as_uri()}
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        screenshot(driver, "report")
    finally:
        close(driver)


def test_the_report_of_an_experiment_comes_from_the_database(
    project: Project, tmp_path: Path
) -> None:
    out = tmp_path / "experiment.html"
    proc = report(project, "--experiment", "managed", "-o", str(out), db=str(project.db))
    assert proc.returncode == 0, proc.stderr
    data = embedded_data(out.read_text())
    jobs = {j["id"]: j["status"] for j in project.jobs()}
    assert data["title"] == "experiment managed"
    assert {r["job_id"]: r["status"] for r in data["rows"]} == jobs
    assert data["swept"] == ["seed", "lr"] and data["seeds"] == ["seed"]
    assert [f["job_id"] for f in data["failures"]] == [i for i, s in jobs.items() if s == "failed"]


def test_a_corrupt_events_file_and_a_vanished_folder_still_give_a_report(
    project: Project, tmp_path: Path
) -> None:
    copy = synced_copy(project, tmp_path)
    folders = sorted(p for p in copy.iterdir() if p.is_dir() and not p.name.startswith("."))
    (folders[0] / "events.jsonl").write_bytes(b"\x00\xff not json\n")
    shutil.rmtree(folders[1])
    out = tmp_path / "r.html"
    proc = report(project, "--sweep", str(copy), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    data = embedded_data(out.read_text())
    assert any("corrupt" in w and str(folders[0]) in w for w in data["warnings"])
    assert sorted(r["status"] for r in data["rows"]).count("missing") == 1


def test_bad_input_is_one_line(project: Project, tmp_path: Path) -> None:
    cases: list[tuple[tuple[str, ...], int, str, Any]] = [
        ((), 2, "give --sweep DIR (a sweep folder) or --experiment E", None),
        (("--sweep", "grid", "-e", "managed"), 2, "give --sweep DIR", None),
        (("--sweep", str(tmp_path / "nowhere")), 1, "no sweep folder at", None),
        (("-e", "nope"), 1, "no jobs in experiment 'nope'", str(project.db)),
        (("-e", "managed"), 1, "no job database at", None),
        (
            ("--sweep", "grid", "-o", str(tmp_path / "no" / "dir" / "r.html")),
            1,
            "cannot write",
            None,
        ),
    ]
    for args, code, needle, db in cases:
        proc = report(project, *args, db=db or "")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == code and len(lines) == 1 and needle in lines[0], (
            args,
            proc.stderr,
        )
