"""``dr_exp ui``: a real dashboard process over a real sweep's database, checked in a real
headless Chromium (Debian's chromium and chromedriver, driven by selenium).

The browser tests skip where Chromium is missing, except in CI (CI=true), where
that is a failure.  With DR_EXP_SCREENSHOTS=DIR, the pages' screenshots (taken
anyway) are also copied there, for the README (docs/img).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
from conftest import ROOT, run_app

from dr_exp.db import JobDB
from dr_exp.ui.assets import plotly_js

MANAGED = ROOT / "tests" / "apps" / "managed.py"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
QUEUE_ONLY = ("hydra/launcher=dr_exp", "hydra.launcher.wait=false", "hydra.launcher.workers=0")
# Modules that `dr_exp --help` and the core must never import (the ui extra's).
UI_HEAVY = ("starlette", "uvicorn", "jinja2", "plotly", "pandas", "selenium", "anyio")
WAIT_S = 30.0
# An absolute URL, or a protocol-relative one where a page loads from (src=, href=, url()).
OUTSIDE_URL = re.compile(
    r"""https?://[^\s"'<>)\\]+|(?:src|href|action)\s*=\s*["']//[^"']+|url\(\s*["']?//[^)]+"""
)
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
OFFLINE_FLAGS = (
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves
    "--proxy-server=http://127.0.0.1:9",  # and any request that tried would go nowhere
)


def prerequisite(problem: str) -> None:
    """Skip for a missing prerequisite; in CI, fail (scripts/test.sh installs them)."""
    if os.environ.get("CI"):
        pytest.fail(f"the dashboard tests must run in CI: {problem}")
    pytest.skip(problem)


def need_ui_extra() -> None:
    missing = [m for m in ("starlette", "uvicorn", "jinja2", "plotly") if not _importable(m)]
    if missing:
        prerequisite(f"needs the ui extra ({', '.join(missing)}): pip install -e '.[ui]'")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- a real sweep and real dashboards ----------------------------------------------------
class Project:
    """A folder with a job database made by real sweeps of tests/apps/managed.py."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / ".dr_exp" / "jobs.db"
        self.env = {"DR_EXP_DB": str(self.db), "DR_EXP_SECRET_KEY_FILE": str(root / "key")}

    def sweep(self, *overrides: str, fails: bool = False) -> None:
        """A real multirun; one with failing jobs exits 1 after the batch, as under Hydra."""
        proc = run_app(MANAGED, "-m", *overrides, cwd=self.root, env=self.env, check=not fails)
        assert proc.returncode == (1 if fails else 0), proc.stderr

    def jobs(self, **filters: Any) -> list[dict]:
        with JobDB.open(self.db, create=False) as db:
            return db.list_jobs(**filters)

    def job(self, *overrides: str, experiment: str = "managed") -> dict:
        (found,) = [
            j
            for j in self.jobs(experiment=experiment)
            if all(o in j["overrides"] for o in overrides)
        ]
        return found

    def sweep_id(self, folder: str) -> int:
        with JobDB.open(self.db, create=False) as db:
            (found,) = [s["id"] for s in db.sweeps() if s["sweep_dir"] == folder]
        return found

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dr_exp", "--db", str(self.db), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )


def make_project(root: Path) -> Project:
    """seeds 0,1,2 x lr 0.1,0.2 run by local workers, seed 1 failing; two jobs left pending
    (their own sweep and experiment, queued only); a small sweep of experiment 'broken' for bad input."""
    project = Project(root)
    (root / "fail" / "1").mkdir(parents=True)
    project.sweep(
        "seed=0,1,2",
        "lr=0.1,0.2",
        f"fail_if={root / 'fail'}",
        "hydra/launcher=dr_exp",
        "hydra.sweep.dir=grid",
        "hydra.launcher.tags=[grid]",
        fails=True,
    )
    # An experiment of their own: no worker of the sweeps around them may take them.
    project.sweep(
        "seed=7,8",
        *QUEUE_ONLY,
        "hydra.sweep.dir=queued",
        "hydra.launcher.experiment=queued",
        "hydra.launcher.tags=[later]",
    )
    project.sweep(
        "seed=0,1,2",
        "hydra/launcher=dr_exp",
        "hydra.sweep.dir=broken",
        "hydra.launcher.experiment=broken",
    )
    return project


class Server:
    """``python -m dr_exp ui --port 0`` as a real process; its URL read from its first line."""

    def __init__(self, project: Project, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dr_exp", "--db", str(project.db), "ui", "--port", "0", *args],
            cwd=project.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **project.env},
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        match = re.match(
            r"dr_exp ui: (http://127\.0\.0\.1:(\d+)/)(?:\?token=(\S+))?$", first.strip()
        )
        assert match, f"unexpected first line {first!r}; stderr: {self.stop()}"
        self.base, self.port, self.token = match.group(1), int(match.group(2)), match.group(3)
        self.origin = self.base.rstrip("/")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        return err

    def get(self, path: str) -> tuple[int, dict, str]:
        return request(self.base + path.lstrip("/"))

    def post(self, path: str, body: Any, token: Optional[str] = None) -> tuple[int, Any]:
        headers = {"content-type": "application/json"}
        if token is not None:
            headers["x-dr-exp-token"] = token
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, _, text = request(self.base + path.lstrip("/"), data=data, headers=headers)
        return status, json.loads(text)


def request(url: str, data: Optional[bytes] = None, headers: Optional[dict] = None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    need_ui_extra()
    return make_project(tmp_path_factory.mktemp("ui"))


@pytest.fixture(scope="module")
def dashboard(project: Project) -> Iterator[Server]:
    server = Server(project, "--allow-actions")
    yield server
    err = server.stop()  # Ctrl-C: a clean stop, with status 130 as for every dr_exp command
    assert server.proc.returncode == 130 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def readonly(project: Project) -> Iterator[Server]:
    server = Server(project)
    yield server
    server.stop()


# -- the browser -----------------------------------------------------------------------
def chrome(*extra: str) -> Any:
    """A real headless Chromium through chromedriver, with a fresh profile; it logs the
    browser console and every network request (performance log)."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        prerequisite(
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
    if not _importable("selenium"):
        prerequisite("needs selenium: pip install -e '.[test]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="dr_exp-chrome-")
    for flag in (*CHROME_FLAGS, *extra, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.profile_dir = profile
    return driver


def close(driver: Any) -> None:
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    driver = chrome()
    yield driver
    close(driver)


@pytest.fixture
def browser(chromium: Any) -> Any:
    """The module's browser, its console and request logs emptied for this test."""
    chromium.get_log("browser")
    chromium.get_log("performance")
    return chromium


def wait_until(driver: Any, check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` until it is truthy; fail naming ``what`` and the browser console."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - an element not there yet, a page still loading
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            console = [e["message"] for e in driver.get_log("browser")]
            pytest.fail(f"timed out waiting for {what}; console: {console}")
        time.sleep(0.1)


def visit(driver: Any, url: str, check: Callable[[], Any], what: str) -> Any:
    """Open ``url``, then wait until the page drew what ``check`` reads."""
    driver.get(url)
    return wait_until(driver, check, what)


def texts(driver: Any, css: str) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", css
    )


def choose(driver: Any, css: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("css selector", css)).select_by_value(value)


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def requested_urls(driver: Any) -> set[str]:
    """Every URL the browser asked for since the last call (its own chrome:// pages aside)."""
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return {u for u in urls if not u.startswith(("chrome://", "chrome-untrusted://"))}


def screenshot(driver: Any, name: str, height: Optional[int] = None) -> Path:
    """A full-page PNG in a temporary folder, copied to $DR_EXP_SCREENSHOTS when set."""
    full = height or driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(full, 600), 6000))
    time.sleep(0.3)  # let plotly's resize handler redraw at the new width
    out = Path(tempfile.gettempdir()) / f"dr_exp-{name}.png"
    driver.save_screenshot(str(out))
    driver.set_window_size(1400, 1000)
    target = os.environ.get("DR_EXP_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(target) / f"{name}.png")
    return out


def drawn_plots(driver: Any) -> list[int]:
    """For each plot element on the page: how many SVG layers plotly drew in it."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.plot')].map(p => p.querySelectorAll('svg').length)"
    )


# -- the pages, in a real browser ----------------------------------------------------------
def test_jobs_table_shows_the_jobs_of_the_real_sweep(
    browser: Any, project: Project, dashboard: Server
) -> None:
    grid = project.jobs(tags=["grid"])
    rows = lambda: len(texts(browser, "table.data tbody tr")) == len(grid)  # noqa: E731
    visit(browser, dashboard.base + "jobs?tag=grid", rows, "6 rows")
    shown = texts(browser, "table.data tbody td.overrides")
    assert sorted(shown) == sorted(" ".join(j["overrides"]) for j in grid)
    statuses = texts(browser, "table.data tbody .status")
    assert sorted(statuses) == sorted(j["status"] for j in grid) and statuses.count("failed") == 2
    assert texts(browser, ".pager .total") == ["6 job(s) match"]

    # Filter by status and failure reason through the form: the server pages and filters.
    choose(browser, "select[name=status]", "failed")
    error = browser.find_element("css selector", "input[name=error]")
    error.send_keys("told to FAIL")
    browser.find_element("css selector", "form.filters button[type=submit]").click()
    wait_until(
        browser, lambda: texts(browser, ".pager .total") == ["2 job(s) match"], "2 failed jobs"
    )
    assert set(texts(browser, "table.data tbody .status")) == {"failed"}
    assert "status=failed" in browser.current_url and "error=told" in browser.current_url
    screenshot(browser, "dashboard-jobs")
    assert console_errors(browser) == []


def test_jobs_are_paged_and_sorted_on_the_server(dashboard: Server, project: Project) -> None:
    status, _, text = dashboard.get("api/jobs?per=25&sort=id&order=desc&page=1")
    data = json.loads(text)
    everyone = sorted((j["id"] for j in project.jobs()), reverse=True)
    assert status == 200 and [j["id"] for j in data["jobs"]] == everyone and data["pages"] == 1
    _, _, text = dashboard.get("api/jobs?sort=status&experiment=managed&tag=grid")
    assert [j["status"] for j in json.loads(text)["jobs"]] == ["completed"] * 4 + ["failed"] * 2
    # The failure reason: its class (a RuntimeError is an "error"), or text of its summary.
    failed = sorted(j["id"] for j in project.jobs(statuses=["failed"]))
    for query, ids in (
        ("failure=error", failed),
        ("failure=oom,timeout", []),
        ("error=SEED+1", failed),
    ):
        _, _, text = dashboard.get(f"api/jobs?{query}")
        assert [j["id"] for j in json.loads(text)["jobs"]] == ids, query
    status, _, text = dashboard.get("api/jobs?failure=bogus")
    assert status == 400 and "unknown failure class 'bogus'" in json.loads(text)["error"]


def test_a_job_page_shows_error_txt_log_events_and_config(
    browser: Any, project: Project, dashboard: Server
) -> None:
    failed = project.job("seed=1", "lr=0.1")
    visit(
        browser,
        dashboard.base + f"jobs/{failed['id']}",
        lambda: "RuntimeError: seed 1 is told to fail" in "".join(texts(browser, "pre.error")),
        "error.txt",
    )
    error_txt = (Path(failed["output_dir"]) / "error.txt").read_text().strip()
    assert texts(browser, "pre.error")[0].strip() == error_txt
    assert "epoch 1 of seed 1" in texts(browser, "pre.log")[0]
    assert "seed: 1" in texts(browser, "pre.config")[0]
    assert texts(browser, "pre.overrides")[0].split("\n") == failed["overrides"]
    assert texts(browser, "h1 .status") == ["failed"]
    events = texts(browser, "[data-section=events] tbody tr")
    assert len(events) == 2 and all("epoch_complete" in e for e in events)
    attempts = texts(browser, "[data-section=attempts] tbody tr")
    assert len(attempts) == 1 and failed["worker"] in attempts[0] and "failed" in attempts[0]
    wait_until(
        browser, lambda: drawn_plots(browser) and min(drawn_plots(browser)) > 0, "the job's curve"
    )
    screenshot(browser, "dashboard-job")
    assert console_errors(browser) == []


def test_a_sweep_page_draws_results_curves_and_best_jobs(
    browser: Any, project: Project, dashboard: Server
) -> None:
    visit(
        browser,
        dashboard.base + f"sweeps/{project.sweep_id('grid')}",
        lambda: len(drawn_plots(browser)) == 5 and min(drawn_plots(browser)) > 0,
        "plots",
    )
    # Learning curves from the real StructuredLogger events: one line per job.
    lines = browser.execute_script(
        "return document.querySelectorAll('[data-section=curves] .plot .scatterlayer .trace').length"
    )
    assert lines == 6
    # acc against lr, mean and spread over seeds: acc = lr * 10 + seed, seed 1 failed.
    groups = texts(browser, "[data-section=groups] tbody tr")
    assert any("0.1" in g and "2 ± 1.414 (2)" in g for g in groups), groups
    # The best job by acc is seed=2 lr=0.2 (acc 4).
    best = project.job("seed=2", "lr=0.2")
    assert texts(browser, "[data-section=best] tbody tr td:nth-child(2)")[0] == f"#{best['id']}"
    failures = texts(browser, "[data-section=failures] pre.error")
    assert len(failures) == 2 and all("RuntimeError: seed 1 is told to fail" in f for f in failures)
    # A chosen metric redraws the scatter view and the best jobs, lowest loss first.
    choose(browser, "[data-section=best] select[aria-label=metric]", "loss")
    wait_until(
        browser,
        lambda: texts(browser, "[data-section=best] thead th")[2].startswith("loss"),
        "loss",
    )
    loss = texts(browser, "[data-section=best] tbody td.best")
    assert [float(v) for v in loss] == sorted(float(v) for v in loss)
    screenshot(browser, "dashboard-sweep")
    assert console_errors(browser) == []


def test_the_timeline_shows_which_worker_ran_which_job(
    browser: Any, project: Project, dashboard: Server
) -> None:
    workers = sorted({j["worker"] for j in project.jobs(tags=["grid"])})
    # One of them reports its GPU, as a worker's heartbeat on a GPU node records NVML's numbers.
    with JobDB.open(project.db, create=False) as db:
        gpu = {"gpu_util": 73.0, "gpu_mem_used_mb": 2048.0, "gpu_mem_total_mb": 81920.0}
        db.worker_heartbeat(workers[0], "exited", None, gpu)
    bars = "return document.querySelectorAll('[data-section=plot] .barlayer .point').length"
    url = dashboard.base + f"timeline?sweep={project.sweep_id('grid')}"
    visit(browser, url, lambda: browser.execute_script(bars) == 6, "a bar per attempt")
    rows = texts(browser, "[data-section=workers] tbody tr")
    assert len(rows) == len(workers)
    (util,) = [r for r in rows if r.startswith(workers[0])]
    assert "73%" in util and "2.0/80 GiB" in util
    labels = texts(browser, "[data-section=plot] .ytick text")
    assert f"{workers[0]} 73%" in labels and set(labels) - {f"{workers[0]} 73%"} == set(workers[1:])
    screenshot(browser, "dashboard-timeline")
    assert console_errors(browser) == []


def test_the_overview_counts_experiments_and_sweeps(browser: Any, dashboard: Server) -> None:
    visit(
        browser,
        dashboard.base,
        lambda: len(texts(browser, "[data-section=sweeps] tbody tr")) == 3,
        "3 sweeps",
    )
    experiments = texts(browser, "[data-section=experiments] tbody tr")
    assert experiments == [
        "broken3 completed3",
        "managed4 completed · 2 failed6",
        "queued2 pending2",
    ]
    screenshot(browser, "dashboard-overview")


# -- actions: the token, and the CLI's checks -------------------------------------------------
def test_an_action_without_the_token_is_refused(
    project: Project, dashboard: Server, readonly: Server
) -> None:
    target = project.job("seed=8", experiment="queued")
    assert target["status"] == "pending"
    for server, token in (
        (dashboard, None),
        (dashboard, "not-the-token"),
        (readonly, dashboard.token),
    ):
        status, body = server.post("api/actions/cancel", {"ids": [target["id"]]}, token=token)
        assert status == 403 and ("token" in body["error"] or "read-only" in body["error"]), body
    assert project.job("seed=8", experiment="queued")["status"] == "pending"


def test_actions_go_through_the_clis_checks(project: Project, dashboard: Server) -> None:
    done = project.job("seed=0", "lr=0.1")
    pending = project.job("seed=8", experiment="queued")
    token = dashboard.token
    cases = [
        ("retry", {"ids": [pending["id"]]}, "only failed or cancelled jobs can be retried"),
        ("cancel", {"ids": [done["id"]]}, "only pending or running jobs can be cancelled"),
        ("cancel", {"ids": [pending["id"], 999999]}, "no job with id 999999"),
        ("priority", {"ids": [pending["id"]], "set": 5000}, "from 0 to 1000"),
        (
            "priority",
            {"ids": [pending["id"]], "set": 1, "boost": 1},
            "either a priority to set or a boost",
        ),
        ("cancel", {"ids": "all"}, "a list of ids"),
        ("nope", {"ids": [pending["id"]]}, "the actions are cancel, retry and priority"),
    ]
    for action, body, needle in cases:
        status, out = dashboard.post(f"api/actions/{action}", body, token=token)
        assert status in (400, 404) and needle in out["error"], (action, out)
    status, out = dashboard.post("api/actions/cancel", b"{not json", token=token)
    assert status == 400 and "JSON" in out["error"]
    assert (
        project.job("seed=8", experiment="queued")["status"],
        project.job("seed=8", experiment="queued")["priority"],
    ) == ("pending", 500)
    status, out = dashboard.post(
        "api/actions/priority", {"ids": [pending["id"]], "boost": 7}, token=token
    )
    assert status == 200 and out["message"] == f"job {pending['id']}: priority 500 -> 507"
    assert project.job("seed=8", experiment="queued")["priority"] == 507


def test_the_browser_cancels_a_pending_job_with_the_token(
    browser: Any, project: Project, dashboard: Server
) -> None:
    target = project.job("seed=7", experiment="queued")
    assert target["status"] == "pending"
    visit(
        browser,
        dashboard.base + f"jobs/{target['id']}?token={dashboard.token}",
        lambda: texts(browser, "h1 .status") == ["pending"],
        "the pending job",
    )
    assert "token" not in browser.current_url  # kept by the page, off the address bar
    browser.execute_script("window.drExpMarker = 'no reload'")
    browser.find_element("css selector", "button[data-action=cancel]").click()
    wait_until(browser, lambda: texts(browser, "h1 .status") == ["cancelled"], "the job cancelled")
    assert "cancelled 1 pending job(s)" in texts(browser, "#flash")[0]
    assert browser.execute_script("return window.drExpMarker") == "no reload"
    assert project.job("seed=7", experiment="queued")["status"] == "cancelled"


def test_a_readonly_dashboard_offers_no_actions(
    browser: Any, project: Project, readonly: Server
) -> None:
    visit(
        browser,
        readonly.base + f"jobs/{project.job('seed=8', experiment='queued')['id']}",
        lambda: texts(browser, "h1 .status") == ["pending"],
        "the job page",
    )
    assert browser.find_elements("css selector", "button[data-action]") == []
    assert texts(browser, "#mode") == ["read-only"]


def test_pages_follow_a_running_sweep_without_reloading(
    browser: Any, project: Project, dashboard: Server
) -> None:
    """The jobs table and a running job's page (its status, its log tail) update in place."""
    markers = project.root / "markers"
    project.sweep(
        "seed=3,4",
        "sleep=120",
        f"marker_dir={markers}",
        *QUEUE_ONLY,
        "hydra.sweep.dir=live",
        "hydra.launcher.experiment=live",
    )
    statuses = lambda: texts(browser, "table.data tbody .status")  # noqa: E731
    visit(
        browser,
        dashboard.base + "jobs?experiment=live",
        lambda: statuses() == ["pending"] * 2,
        "pending",
    )
    browser.execute_script("window.drExpMarker = 'no reload'")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dr_exp",
            "--db",
            str(project.db),
            "-e",
            "live",
            "worker",
            "--idle-timeout",
            "1",
        ],
        cwd=project.root,
        env={**os.environ, **project.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(browser, lambda: "running" in statuses(), "the table to show a running job")
        assert browser.execute_script("return window.drExpMarker") == "no reload"
        (running,) = [j for j in project.jobs(experiment="live") if j["status"] == "running"]
        seed = next(o for o in running["overrides"] if o.startswith("seed="))[5:]
        visit(
            browser,
            dashboard.base + f"jobs/{running['id']}",
            lambda: f"epoch 1 of seed {seed}" in "".join(texts(browser, "pre.log")),
            "the log",
        )
        browser.execute_script("window.drExpMarker = 'no reload'")
        (markers / "release").write_text("")  # ends every sleep: the jobs finish
        wait_until(browser, lambda: texts(browser, "h1 .status") == ["completed"], "completed")
        wait_until(browser, lambda: "done" in texts(browser, "pre.log")[0], "the log's last line")
        assert browser.execute_script("return window.drExpMarker") == "no reload"
        assert worker.wait(timeout=120) == 0, worker.stderr.read() if worker.stderr else ""
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    visit(
        browser,
        dashboard.base + "jobs?experiment=live",
        lambda: statuses() == ["completed"] * 2,
        "both finished",
    )


# -- offline: nothing from another host ----------------------------------------------------
def outside_urls(text: str, origin: str) -> list[str]:
    """URLs in ``text`` that point anywhere but ``origin`` (this server)."""
    return [u for u in OUTSIDE_URL.findall(text) if not u.startswith(origin + "/")]


def test_no_page_refers_to_an_outside_host(
    browser: Any, project: Project, dashboard: Server
) -> None:
    """Every page, script and stylesheet the dashboard serves names this server only.

    The one exception is plotly.min.js, served byte for byte from the plotly wheel:
    it names other hosts in license comments and for features dr_exp never draws
    (map tiles, geo topojson, Chart Studio links, which PLOT_CONFIG turns off).  That
    it never loads from them is checked in the browser: every request of every page
    goes to this server, and the Content-Security-Policy would block any other.
    """
    pages = ["", "jobs", "jobs?status=failed", "timeline", "jobs/999999", "sweeps/999999"]
    pages += [f"jobs/{j['id']}" for j in project.jobs()]
    with JobDB.open(project.db, create=False) as db:
        pages += [f"sweeps/{s['id']}" for s in db.sweeps()]
    assets: set[str] = set()
    for page in pages:
        status, headers, html = dashboard.get(page)
        assert status in (200, 404), (page, status)
        assert "default-src 'self'" in headers["content-security-policy"]
        assert outside_urls(html, dashboard.origin) == [], page
        assets.update(re.findall(r'(?:src|href)="(/static/[^"]+)"', html))
    assert assets == {
        "/static/style.css",
        "/static/dr_exp.js",
        "/static/dashboard.js",
        "/static/vendor/plotly.min.js",
    }
    for asset in assets - {"/static/vendor/plotly.min.js"}:
        status, _, text = dashboard.get(asset)
        assert status == 200 and outside_urls(text, dashboard.origin) == [], asset
    with urllib.request.urlopen(dashboard.base + "static/vendor/plotly.min.js") as response:
        assert response.read() == plotly_js().read_bytes()  # the wheel's own file

    requested_urls(browser)  # forget earlier tests' requests
    for page in pages:
        visit(
            browser,
            dashboard.base + page,
            lambda: browser.execute_script("return document.readyState") == "complete",
            page,
        )
    urls: set[str] = set()

    def refreshed() -> bool:  # one refresh round too: the pages' own /api requests
        urls.update(requested_urls(browser))
        return any("/api/" in u for u in urls)

    wait_until(browser, refreshed, "a page's refresh from /api")
    assert any(u.endswith("plotly.min.js") for u in urls)
    outside = [u for u in urls if not u.startswith((dashboard.origin + "/", "data:"))]
    assert outside == []


# -- bad input: a clear message, never a traceback --------------------------------------------
def test_bad_input_gives_a_clear_message(project: Project, dashboard: Server) -> None:
    cases = [
        ("jobs/999999", 404, "no job with id 999999"),
        ("sweeps/999999", 404, "no sweep with id 999999"),
        ("jobs?sweep=999999", 400, "no sweep with id 999999"),
        ("jobs?sweep=no/such/folder", 400, "no sweep with folder no/such/folder"),
        ("jobs?status=done", 400, "unknown status 'done'"),
        ("jobs?sort=colour", 400, "cannot sort jobs by 'colour'"),
        ("jobs?page=x", 400, "page must be a whole number"),
        ("no/such/page", 404, "no such page"),
    ]
    for path, code, needle in cases:
        status, headers, html = dashboard.get(path)
        assert status == code and needle in html and "Traceback" not in html, (path, html)
        assert headers["content-type"].startswith("text/html")
        status, _, text = dashboard.get("api/" + path)
        assert status == code and needle in json.loads(text)["error"], (path, text)


def test_only_requests_to_localhost_are_answered(dashboard: Server) -> None:
    """A page on another site that rebinds its name to 127.0.0.1 gets nothing (DNS rebinding)."""
    for host, code in (("attacker.example", 400), (f"localhost:{dashboard.port}", 200)):
        status, _, text = request(dashboard.base + "api/overview", headers={"Host": host})
        assert status == code, (host, text)
        if code == 400:
            assert text == "Invalid host header"


def test_a_corrupt_events_file_and_a_vanished_folder_are_reported(
    browser: Any, project: Project, dashboard: Server
) -> None:
    corrupt, gone, fine = (project.job(f"seed={s}", experiment="broken") for s in (0, 1, 2))
    (Path(corrupt["output_dir"]) / "events.jsonl").write_bytes(b"\x00\xff garbage \x13\n{[\n")
    shutil.rmtree(gone["output_dir"])
    _, _, text = dashboard.get(f"api/jobs/{corrupt['id']}")
    assert "corrupt" in json.loads(text)["warning"]
    _, _, text = dashboard.get(f"api/jobs/{gone['id']}")
    assert json.loads(text)["folder_state"] == "missing"
    status, _, text = dashboard.get(f"api/sweeps/{project.sweep_id('broken')}")
    analysis = json.loads(text)["analysis"]
    assert status == 200 and len(analysis["curves"][0]["series"]) == 1  # the fine job's
    assert any("corrupt" in w for w in analysis["warnings"])
    assert any("missing" in w and str(gone["id"]) in w for w in analysis["warnings"])
    assert fine["status"] == "completed"

    visit(
        browser,
        dashboard.base + f"jobs/{gone['id']}",
        lambda: "no longer exists" in "".join(texts(browser, "dd")),
        "the folder note",
    )
    visit(
        browser,
        dashboard.base + f"jobs/{corrupt['id']}",
        lambda: "corrupt" in "".join(texts(browser, ".warning")),
        "the warning",
    )
    visit(
        browser,
        dashboard.base + f"sweeps/{project.sweep_id('broken')}",
        lambda: len(texts(browser, ".warnings li")) == 2,
        "both warnings",
    )
    assert console_errors(browser) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_port_in_use_is_one_line_and_exit_1(project: Project) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = project.cli("ui", "--port", str(port), timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"dr_exp: error: port {port} on 127.0.0.1 is in use; "
        "choose another with --port N (0 picks a free one)"
    )


def test_no_database_is_one_line_before_listening(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dr_exp",
            "--db",
            str(tmp_path / "none.db"),
            "ui",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "no job database at" in proc.stderr and "Traceback" not in proc.stderr


def test_without_the_extra_ui_says_how_to_install_it(project: Project) -> None:
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None  # as on a worker node without the extra\n"
        "from dr_exp.cli import main\n"
        f"main(['--db', {str(project.db)!r}, 'ui'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "dr_exp: error: this needs starlette: pip install 'dr_exp[ui]'"


def test_the_cli_imports_nothing_of_the_ui_extra() -> None:
    for args in (["--help"], ["ui", "--help"], ["report", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "dr_exp", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        modules = {
            line.rsplit("|", 1)[-1].strip().split(".")[0]
            for line in proc.stderr.splitlines()
            if "|" in line
        }
        assert "dr_exp" in modules and not modules & set(UI_HEAVY), (args, modules & set(UI_HEAVY))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, dr_exp.cli, dr_exp.worker, dr_exp.ui; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:])))",
            *UI_HEAVY,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
