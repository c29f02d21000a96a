"""The dashboard: a Starlette app over the job database and the output folders.

Every page is a shell that ``static/dashboard.js`` fills from JSON: the page's
data comes embedded in it, and while jobs run the script fetches the same data
again from ``/api/<page>`` and redraws only what changed, so nothing reloads.

Security:

- ``dr_exp ui`` binds 127.0.0.1 unless told otherwise, and on a loopback address
  it answers only requests addressed to localhost, so that a web page elsewhere
  cannot read it through DNS rebinding;
- it is read-only unless started with ``--allow-actions``.  Then each action
  needs the secret token of this start (header ``X-DrExp-Token``, compared in
  constant time) and goes through ``JobDB.cancel``, ``retry`` and
  ``set_priority`` with the CLI's strict checks: a job that cannot take the
  action is an error, and nothing changes;
- every response carries a Content-Security-Policy that lets the browser load
  from this server only, and no inline script.

The database is opened for each request, in the thread that serves it: SQLite
connections stay in their thread, and a read never holds a lock between requests.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dr_exp import defaults, failures, jobfiles, render, results
from dr_exp.db import JobDB
from dr_exp.errors import BadInput, UserError
from dr_exp.ui import LOOPBACK, assets
from dr_exp.ui.analysis import analyse, curve_plots, job_events, read_tail

TOKEN_HEADER = "x-dr-exp-token"
PAGE_SIZES = (25, 50, 100, 200, 500)
LOG_LINES, ERROR_LINES, CONFIG_LINES, EVENTS_SHOWN = 200, 200, 2000, 200
TIMELINE_LIMIT = 2000
LIVE = ("pending", "running", "cancelling")
STATIC = {
    "style.css": assets.static_file("style.css"),
    "dr_exp.js": assets.static_file("dr_exp.js"),
    "dashboard.js": assets.static_file("dashboard.js"),
}
SECURITY_HEADERS = [
    (b"content-security-policy", assets.DASHBOARD_CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class NotFound(UserError):
    """An unknown job, sweep or page: 404."""


class Forbidden(UserError):
    """An action on a read-only dashboard, or without the token: 403."""


def _int(query: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    text = query.get(name) or str(default)
    if not text.isdigit() or int(text) < minimum:
        raise BadInput(f"{name} must be a whole number of {minimum} or more, got {text!r}")
    return int(text)


def _short(value: Any, limit: int = 80) -> Optional[str]:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listed(text: Optional[str]) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


JOB_KEYS = (
    "id experiment sweep_id job_num status priority tags overrides attempts worker host "
    "created started ended output_dir error failure"
).split()


@dataclass
class Dashboard:
    """What the pages show, as JSON-ready dicts; every method opens the database anew."""

    db_path: Path
    experiment: Optional[str] = None
    token: Optional[str] = None  # set: actions are allowed, with this token

    def open(self) -> JobDB:
        return JobDB.open(self.db_path, create=False)

    def overview(self) -> dict:
        with self.open() as db:
            counts = db.status_counts(self.experiment)
            by_sweep = db.sweep_counts(self.experiment)
            sweeps = [
                s for s in db.sweeps() if s["experiment"] == (self.experiment or s["experiment"])
            ]
        experiments: dict[str, dict[str, int]] = {}
        for row in counts:
            experiments.setdefault(row["experiment"], {})[row["status"]] = row["n"]
        per_sweep: dict[int, dict[str, int]] = {}
        for row in by_sweep:
            per_sweep.setdefault(row["sweep_id"], {})[row["status"]] = row["n"]
        return {
            "db": str(self.db_path),
            "experiments": [
                {"name": name, "counts": c, "total": sum(c.values())}
                for name, c in sorted(experiments.items())
            ],
            "sweeps": [
                dict(
                    s,
                    folder=str(Path(s["cwd"], s["sweep_dir"])) if s["sweep_dir"] else None,
                    counts=per_sweep.get(s["id"], {}),
                    total=sum(per_sweep.get(s["id"], {}).values()),
                )
                for s in reversed(sweeps)
            ],
            "live": any(row["status"] in LIVE for row in counts),
        }

    def jobs(self, query: Mapping[str, str]) -> dict:
        statuses = _listed(query.get("status"))
        classes = _listed(query.get("failure"))
        for name in classes:
            if name not in failures.CLASSES:
                raise BadInput(
                    f"unknown failure class {name!r}; choose from {', '.join(failures.CLASSES)}"
                )
        per = _int(query, "per", 50)
        per = per if per in PAGE_SIZES else 50
        page = _int(query, "page", 1)
        with self.open() as db:
            sweep = query.get("sweep")
            rows, total = db.jobs_page(
                statuses=statuses or None,
                experiment=query.get("experiment") or self.experiment,
                tags=_listed(query.get("tag")),
                sweep_ids=db.sweeps_named(sweep) if sweep else None,
                error=query.get("error") or None,
                failures=classes or None,
                sort=query.get("sort") or "id",
                descending=query.get("order") == "desc",
                limit=per,
                offset=(page - 1) * per,
            )
        jobs = []
        for j in rows:
            out = {k: j[k] for k in JOB_KEYS}
            out["result"] = _short(j["error"] if j["status"] == "failed" else j["return_value"])
            jobs.append(out)
        return {
            "jobs": jobs,
            "total": total,
            "page": page,
            "per": per,
            "pages": max(1, -(-total // per)),
            "sizes": PAGE_SIZES,
            "sorts": JobDB.VIEW_SORTS,
            "statuses": defaults.STATUSES,
            "failures": failures.CLASSES,
            "live": any(j["status"] in LIVE for j in rows),
        }

    def job(self, job_id: int) -> dict:
        with self.open() as db:
            job = db.get_job(job_id)
            if job is None:
                raise NotFound(f"no job with id {job_id}")
            attempts = db.attempts(job_id)
        folder = Path(job["output_dir"]) if job["output_dir"] else None
        exists = folder is not None and folder.is_dir()
        try:
            logs = sorted(folder.glob("*.log")) if folder is not None and exists else []
        except OSError:  # the folder went away while we looked
            logs, exists = [], False
        events, warning = job_events(folder if exists else None)
        me = {"job_id": job_id, "label": f"job {job_id}", "group": f"job {job_id}"}
        return {
            "job": {
                k: job.get(k) for k in JOB_KEYS + ["return_value", "max_attempts", "app", "kind"]
            },
            "attempts": attempts,
            "folder": str(folder) if folder else None,
            "folder_state": "none" if folder is None else ("ok" if exists else "missing"),
            "config": read_tail(folder / ".hydra" / "config.yaml", CONFIG_LINES)
            if exists
            else None,
            "error_txt": read_tail(folder / jobfiles.ERROR_FILE, ERROR_LINES) if exists else None,
            "logs": {p.name: read_tail(p, LOG_LINES) for p in logs},
            "events": events[-EVENTS_SHOWN:],
            "events_total": len(events),
            "curves": curve_plots([(me, events)]),
            "warning": warning,
            "live": job["status"] in LIVE,
        }

    def sweep(self, sweep_id: int) -> dict:
        with self.open() as db:
            sweep = next((s for s in db.sweeps() if s["id"] == sweep_id), None)
            if sweep is None:
                raise NotFound(f"no sweep with id {sweep_id}")
            jobs = {j["id"]: j for j in db.list_jobs(sweep_ids=[sweep_id])}
        folder = Path(sweep["cwd"], sweep["sweep_dir"]) if sweep["sweep_dir"] else None
        if folder is not None and folder.is_dir():
            table = results.load(sweep_dir=folder)
        else:  # a trainer sweep, or a folder that is gone: the database lists the jobs
            table = results.load(experiment=sweep["experiment"], db=self.db_path)
        title = f"sweep {sweep_id} · {sweep['experiment']}"
        data = analyse(table, title=title, source=str(folder or self.db_path), jobs=jobs)
        if folder is not None and not folder.is_dir():
            data["warnings"].insert(0, f"the sweep folder {folder} is gone")
        return {
            "sweep": dict(sweep, folder=str(folder) if folder else None),
            "analysis": data,
            "live": any(j["status"] in LIVE for j in jobs.values()),
        }

    def timeline(self, query: Mapping[str, str]) -> dict:
        with self.open() as db:
            sweep = query.get("sweep")
            attempts = db.attempts_timeline(
                query.get("experiment") or self.experiment,
                db.sweeps_named(sweep) if sweep else None,
                TIMELINE_LIMIT,
            )
            workers = db.workers_by_id(sorted({a["worker"] for a in attempts if a["worker"]}))
        for a in attempts:
            a["overrides"] = json.loads(a["overrides"] or "[]")
        return {
            "attempts": attempts,
            "workers": workers,
            "now": time.time(),
            "limit": TIMELINE_LIMIT,
            "live": any(a["ended"] is None for a in attempts),
        }

    # -- actions --------------------------------------------------------------------
    def check_token(self, given: Optional[str]) -> None:
        if self.token is None:
            raise Forbidden(
                "this dashboard is read-only; start it with dr_exp ui --allow-actions "
                "to cancel, retry or reprioritize jobs"
            )
        if not given or not secrets.compare_digest(given.encode(), self.token.encode()):
            raise Forbidden("missing or wrong token: open the URL that dr_exp ui printed")

    def act(self, action: str, body: Any) -> dict:
        """cancel, retry or priority on explicit job ids, with the CLI's strict checks."""
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or not all(_is_id(i) for i in ids):
            raise BadInput('name the jobs as a list of ids, e.g. {"ids": [3, 5]}')
        with self.open() as db:
            if self.experiment:
                outside = set(ids) - {
                    j["id"] for j in db.list_jobs(ids=ids, experiment=self.experiment)
                }
                if outside:
                    raise BadInput(f"job {min(outside)} is not in experiment {self.experiment!r}")
            if action == "cancel":
                done = db.cancel(ids, strict=True)
                message = f"cancelled {len(done['pending'])} pending job(s): {render.id_list(done['pending'])}"
                if done["running"]:
                    message += (
                        f"; stopping {len(done['running'])} running job(s): "
                        f"{render.id_list(done['running'])} (their workers confirm)"
                    )
            elif action == "retry":
                attempts = body.get("attempts", defaults.MAX_ATTEMPTS)
                retried = db.retry(ids, attempts=attempts, strict=True)
                message = f"moved {len(retried)} job(s) back to pending: {render.id_list(retried)}"
            elif action == "priority":
                changes = db.set_priority(ids, value=body.get("set"), boost=body.get("boost"))
                message = "; ".join(f"job {i}: priority {old} -> {new}" for i, old, new in changes)
            else:
                raise NotFound(f"no action {action!r}; the actions are cancel, retry and priority")
        return {"ok": True, "message": message}


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class SecurityHeaders:
    """Adds the Content-Security-Policy and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


def create_app(dash: Dashboard, host: str = "127.0.0.1") -> Starlette:
    """The ASGI app; ``host`` is the address it is served on (for the Host check)."""
    env = assets.templates()

    def html(page: str, title: str, data: Any, status: int = 200, message: str = "") -> Response:
        text = env.get_template("dashboard.html").render(
            page=page,
            title=title,
            data=assets.script_json(data),
            plots=page in ("job", "sweep", "timeline"),
            actions=dash.token is not None,
            experiment=dash.experiment,
            message=message,
        )
        return HTMLResponse(text, status_code=status)

    def json_response(data: Any, status: int = 200) -> Response:
        return Response(assets.to_json(data), status_code=status, media_type="application/json")

    def view(page: str, build: Callable[[Request], dict], title: Callable[[Request], str]) -> tuple:
        async def as_page(request: Request) -> Response:
            return html(page, title(request), await run_in_threadpool(build, request))

        async def as_api(request: Request) -> Response:
            return json_response(await run_in_threadpool(build, request))

        return as_page, as_api

    job_id = lambda r: r.path_params["job_id"]  # noqa: E731
    sweep_id = lambda r: r.path_params["sweep_id"]  # noqa: E731
    views = {
        "overview": ("/", lambda r: dash.overview(), lambda r: "Overview"),
        "jobs": ("/jobs", lambda r: dash.jobs(r.query_params), lambda r: "Jobs"),
        "job": ("/jobs/{job_id:int}", lambda r: dash.job(job_id(r)), lambda r: f"Job {job_id(r)}"),
        "sweep": (
            "/sweeps/{sweep_id:int}",
            lambda r: dash.sweep(sweep_id(r)),
            lambda r: f"Sweep {sweep_id(r)}",
        ),
        "timeline": ("/timeline", lambda r: dash.timeline(r.query_params), lambda r: "Timeline"),
    }
    routes = []
    for page, (path, build, title) in views.items():
        as_page, as_api = view(page, build, title)
        routes += [
            Route(path, as_page),
            Route("/api" + (path if path != "/" else "/overview"), as_api),
        ]

    async def action(request: Request) -> Response:
        dash.check_token(request.headers.get(TOKEN_HEADER))
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise BadInput("the request body must be JSON") from None
        return json_response(await run_in_threadpool(dash.act, request.path_params["action"], body))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        path = assets.plotly_js() if name == "vendor/" + assets.PLOTLY else STATIC.get(name)
        if path is None:
            raise NotFound(f"no file {name}")
        return FileResponse(path, headers={"cache-control": "no-cache"})

    routes += [
        Route("/api/actions/{action}", action, methods=["POST"]),
        Route("/static/{name:path}", static),
    ]

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            status = exc.status_code
            message = "no such page" if status == 404 else str(exc.detail)
        elif isinstance(exc, UserError):
            status = (
                404 if isinstance(exc, NotFound) else 403 if isinstance(exc, Forbidden) else 400
            )
            message = str(exc)
        else:  # a bug: one line here; uvicorn logs the traceback in the dr_exp ui terminal
            status, message = (
                500,
                f"internal error ({type(exc).__name__}); see the dr_exp ui terminal",
            )
        message = " ".join(message.split())
        if request.url.path.startswith("/api/"):
            return json_response({"error": message}, status)
        return html("error", "Error", {"error": message}, status, message)

    allowed = ["*"] if host not in LOOPBACK else ["127.0.0.1", "localhost", "::1", "[::1]"]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=allowed),
        ],
        exception_handlers={Exception: on_error, HTTPException: on_error, UserError: on_error},
    )


def new_token() -> str:
    return secrets.token_urlsafe(24)


def serve(app: Starlette, sock: Any) -> None:
    """Serve ``app`` on the listening socket ``sock`` until SIGINT or SIGTERM."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
