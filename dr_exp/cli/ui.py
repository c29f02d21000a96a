"""Seeing the experiment in a browser: ``ui`` (a local dashboard) and ``report`` (one file).

Both need the ``ui`` extra (starlette, uvicorn, jinja2, plotly, pandas), imported
only when the command runs: ``dr_exp --help`` and the workers never load them.
Without the extra, each says so in one line.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import click

import dr_exp.cli.options as o
from dr_exp.errors import BadInput, UserError
from dr_exp.ui import LOOPBACK

if TYPE_CHECKING:
    import socket

DEFAULT_PORT = 8765


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on host:port: a port in use is one line before anything starts."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise BadInput(f"cannot listen on {host!r}: {e.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is in use; choose another with --port N (0 picks a free one)"
            ) from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)  # connections wait in the backlog until the server takes them
    return sock


@click.command(
    "ui",
    short_help="A local web dashboard of sweeps, jobs, results and curves.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    help="The address to listen on. Keep 127.0.0.1 and forward the port to reach it from "
    "another machine: ssh -L 8765:127.0.0.1:8765 login-node.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    help="The port to listen on; 0 picks a free one.",
)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Let the dashboard cancel, retry and reprioritize jobs. Each action needs the secret "
    "token of this start, which is in the URL the command prints.",
)
@o.common
def ui(host: str, port: int, allow_actions: bool) -> int:
    """Serve a dashboard over the job database and the output folders: the experiments and
    sweeps with their progress; the jobs, filtered, sorted and paged; each job's overrides,
    config, attempts, error.txt, log and events; each sweep's results, with every metric
    against every swept parameter (mean and spread over seeds), learning curves from
    StructuredLogger events, the best jobs; and a timeline of which worker ran which job
    when. Pages update themselves while jobs run. Everything it serves ships with dr_exp:
    no page loads anything from the internet. It is read-only unless --allow-actions."""
    from dr_exp import ui as extra

    extra.require(extra.SERVER)
    from dr_exp.db import JobDB
    from dr_exp.ui import server

    scope = o.scope()
    db_path = scope.db_path()
    JobDB.open(db_path, create=False).close()  # a missing database is one line, now
    sock = bind(host, port)
    token = server.new_token() if allow_actions else None
    app = server.create_app(server.Dashboard(db_path, scope.experiment, token), host)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"dr_exp ui: http://{shown}:{bound}/" + (f"?token={token}" if token else ""), flush=True)
    mode = (
        "actions allowed with the token in this URL"
        if token
        else "read-only (--allow-actions to cancel, retry and reprioritize)"
    )
    print(f"  database {db_path}; {mode}; Ctrl-C stops it")
    if host in LOOPBACK:
        print(
            f"  from another machine: ssh -L {bound}:127.0.0.1:{bound} <this host>, then open the URL"
        )
    else:
        print(f"  listening on {host}: whoever reaches this address sees your jobs")
    server.serve(app, sock)
    return 0


@click.command(
    "report", short_help="A sweep's results as one self-contained HTML file (opens offline)."
)
@o.SWEEP_FOLDER
@click.option(
    "--output",
    "-o",
    default="report.html",
    metavar="FILE",
    help="The HTML file to write.",
)
@o.common
def report(sweep: Optional[str], output: str) -> int:
    """Write one HTML file with a sweep's results table, every metric against every swept
    parameter (mean and spread over seeds), learning curves from StructuredLogger events,
    parameters against a chosen metric, the best jobs, and the failures with their
    error.txt. Its data, code and styles are inline and it loads nothing, so it can be
    mailed and opened with the network off. --sweep DIR reads a folder alone;
    --experiment E takes the experiment's jobs from the database."""
    from dr_exp import ui as extra

    extra.require(extra.REPORT)
    from dr_exp.ui import report as html

    scope = o.scope()
    if (sweep is None) == (scope.experiment is None):
        raise click.UsageError("give --sweep DIR (a sweep folder) or --experiment E (the database)")
    data = (
        html.from_sweep_dir(Path(sweep))
        if sweep is not None
        else html.from_experiment(scope.db_path(), str(scope.experiment))
    )
    size = html.write(data, Path(output))
    failed = data["counts"].get("failed", 0)
    print(
        f"wrote {output}: {len(data['rows'])} jobs ({failed} failed), "
        f"{len(data['by_param']) + len(data['curves'])} plots, {size / 1e6:.1f} MB"
    )
    return 0
