"""Every option the commands share, declared once, and the parameter types they use.

A value check that needs one option only is a parameter type here, so that a
bad value is a click usage error (one line, exit 2) before anything runs.
Only checks across options (``--lease`` longer than ``--heartbeat``) are done
by hand, and raise :class:`~dr_exp.errors.BadInput` (one line, exit 1).

Defaults come from :mod:`dr_exp.defaults`, environment variable names from
:mod:`dr_exp.paths`.  This module imports no command module.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence, TypeVar

import click

from dr_exp import defaults, failures, paths
from dr_exp.errors import BadInput

if TYPE_CHECKING:
    from dr_exp.db import JobDB


def log_to_stderr() -> None:
    """Long-running commands (worker, sync run, notify run) log INFO lines to stderr."""
    import logging
    import sys

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s", stream=sys.stderr
    )


F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

SYNC_STATES = ("pending", "uploading", "uploaded", "failing")

DB_RULE = (
    f"The database is --db, else P/{paths.DB_DIR}/{paths.DB_NAME} with --base-path P, "
    f"else ${paths.ENV_DB}, else {paths.DB_DIR}/{paths.DB_NAME} in the current directory."
)


# -- parameter types ---------------------------------------------------------------------
class Choice(click.Choice):
    """click's Choice, with the wording the CLI has always used: ``invalid choice: 'x'``."""

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Any) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            known = ", ".join(map(str, self.choices))
            self.fail(f"invalid choice: {value!r} (choose from {known})", param, ctx)


class Quantity(click.ParamType):
    """A finite number with a lower bound: click.FloatRange lets nan and inf through."""

    def __init__(self, unit: str, minimum: float = 0.0, positive: bool = False) -> None:
        self.name = unit
        self.unit, self.minimum, self.positive = unit, minimum, positive

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Any) -> float:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a number of {self.unit}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of {self.unit}", param, ctx)
        if self.positive and number <= self.minimum:
            self.fail(f"must be more than {self.minimum:g} {self.unit}, got {value}", param, ctx)
        if number < self.minimum:
            self.fail(f"must be {self.minimum:g} {self.unit} or more, got {value}", param, ctx)
        return number


SECONDS = Quantity("seconds")  # 0 or more
POSITIVE_SECONDS = Quantity("seconds", positive=True)
HOURS = Quantity("hours", positive=True)
MINUTES = Quantity("minutes")
TIMESTAMP = Quantity("epoch-seconds", positive=True)
POSITIVE_INT = click.IntRange(min=1)
COUNT = click.IntRange(min=0)


class Priority(click.ParamType):
    """A job priority, checked by the same rule as every other way of setting one."""

    name = "priority"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Any) -> int:
        from dr_exp.db import validate_priority

        try:
            return validate_priority(value)
        except BadInput as e:
            self.fail(str(e), param, ctx)


def _job_id(kind: click.ParamType, text: str, param: Any, ctx: Any) -> int:
    if not text.strip().isdigit():
        kind.fail(f"bad job id {text!r}; give a number like 3", param, ctx)
    return int(text)


MAX_ID_RANGE = 100_000  # ids one range may name


class JobIdList(click.ParamType):
    """One token of job ids: ``3``, ``5,6`` or ``7-9``."""

    name = "ids"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Any) -> tuple:
        if isinstance(value, tuple):
            return value
        ids: list[int] = []
        for part in str(value).split(","):
            if not part.strip():
                continue
            low, sep, high = part.partition("-")
            if sep:
                a, b = _job_id(self, low, param, ctx), _job_id(self, high, param, ctx)
                if b < a:
                    self.fail(f"bad id range {part!r}", param, ctx)
                if b - a >= MAX_ID_RANGE:  # never materialize a billion ids
                    self.fail(
                        f"id range {part!r} names {b - a + 1} jobs; at most {MAX_ID_RANGE} at "
                        "once (select many jobs with --status, --tag or --sweep)",
                        param,
                        ctx,
                    )
                ids.extend(range(a, b + 1))
            else:
                ids.append(_job_id(self, part, param, ctx))
        return tuple(ids)


class JobId(click.ParamType):
    """Exactly one job id."""

    name = "id"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Any) -> int:
        return value if isinstance(value, int) else _job_id(self, str(value), param, ctx)


class CommaChoice(click.ParamType):
    """A comma-separated list of names from ``choices``; ``everything`` (or nothing) is None.

    ``allowed`` narrows what a command may act on (``cancel`` takes pending and
    running jobs only), with ``verb`` saying what it would do.
    """

    def __init__(
        self,
        choices: Sequence[str],
        what: str,
        everything: Optional[str] = None,
        allowed: Optional[Sequence[str]] = None,
        verb: str = "",
    ) -> None:
        self.name = f"{what}[,{what}...]"
        self.choices, self.what, self.everything = tuple(choices), what, everything
        self.allowed, self.verb = tuple(allowed or choices), verb

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Any) -> Optional[tuple]:
        if isinstance(value, tuple):
            return value
        wanted = [s.strip() for s in str(value).split(",") if s.strip()]
        if not wanted or (self.everything and self.everything in wanted):
            return None
        known = ", ".join(self.choices + ((self.everything,) if self.everything else ()))
        for s in wanted:
            if s not in self.choices:
                self.fail(f"unknown {self.what} {s!r}; choose from {known}", param, ctx)
            if s not in self.allowed:
                only = ", ".join(self.allowed)
                self.fail(f"cannot {self.verb} {s} jobs; only {only} ones", param, ctx)
        return tuple(wanted)


class KeyValue(click.ParamType):
    """``KEY=VALUE``, as a (key, value) pair."""

    name = "key=value"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Any) -> tuple:
        if isinstance(value, tuple):
            return value
        key, sep, val = str(value).partition("=")
        if not sep or not key:
            self.fail(f"takes KEY=VALUE, got {value!r}", param, ctx)
        return key, val


# -- the database every command uses -----------------------------------------------------
@dataclass
class Scope:
    """--db, --experiment and --base-path, merged from the group and the command."""

    db: Optional[str] = None
    experiment: Optional[str] = None
    base_path: Optional[str] = None

    def db_path(self) -> Path:
        return paths.job_db(self.db, self.base_path)

    def open_db(self) -> JobDB:
        """The existing database (never created by a command), closed when the command ends."""
        from dr_exp.db import JobDB

        return closed_at_exit(JobDB.open(self.db_path(), create=False))

    def sync_queue(self, queue: Optional[str] = None) -> Path:
        return paths.sync_queue(queue, self.db, self.base_path)


class _Closable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=_Closable)


def closed_at_exit(store: S) -> S:
    """Close a database or queue when the current command ends, however it ends."""
    click.get_current_context().call_on_close(store.close)
    return store


def scope() -> Scope:
    """The current command's Scope (the group's values, overridden by the command's)."""
    return click.get_current_context().find_root().ensure_object(Scope)


def _into_scope(field: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    # The group's callbacks run before the command's, so a command's value wins; an
    # option left out (None) keeps what the group said.
    def remember(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is not None:
            setattr(ctx.find_root().ensure_object(Scope), field, value)
        return value

    return remember


def _apply(*decorators: Decorator) -> Decorator:
    """Several option decorators as one, listed in help in the order given."""

    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def _scoped(field: str, metavar: str, text: str, *flags: str) -> Decorator:
    """An option that goes into the command's Scope rather than to the function."""
    names = flags or (f"--{field.replace('_', '-')}",)
    return click.option(
        *names, metavar=metavar, expose_value=False, callback=_into_scope(field), help=text
    )


DB = _scoped(
    "db",
    "FILE",
    f"The job database (default: see --base-path, then ${paths.ENV_DB}, "
    f"then {paths.DB_DIR}/{paths.DB_NAME}).",
)
EXPERIMENT = _scoped(
    "experiment",
    "NAME",
    "Only this experiment (default: all); for submit, the experiment to queue into.",
    "--experiment",
    "-e",
)
BASE_PATH = _scoped(
    "base_path",
    "DIR",
    f"Project folder: its {paths.DB_DIR}/{paths.DB_NAME} is the database, "
    "and submitted jobs write under its outputs/.",
)
common = _apply(DB, EXPERIMENT, BASE_PATH)
"""--db, --experiment/-e, --base-path: on the group and on every command."""


# -- output --------------------------------------------------------------------------
def format_option(*choices: str) -> Decorator:
    """--format, with the forms one command can print; the first is the default."""
    return click.option(
        "--format", "fmt", type=Choice(choices), default=choices[0], help="Output form."
    )


LIMIT = click.option(
    "--limit", type=POSITIVE_INT, metavar="N", default=None, help="Show at most N rows."
)


def lines_option(default: int, what: str) -> Decorator:
    return click.option(
        "--lines",
        type=COUNT,
        metavar="N",
        default=default,
        help=f"How many last lines of {what} to show.",
    )


OUTPUT = click.option(
    "--output", "-o", metavar="FILE", help="Write to FILE (atomically); '-' is stdout."
)
WATCH = click.option(
    "--watch", is_flag=True, help="Redraw until Ctrl-C (needs rich: pip install 'dr_exp[watch]')."
)
INTERVAL = click.option(
    "--interval", type=POSITIVE_SECONDS, default=2.0, help="With --watch: seconds between redraws."
)


# -- results ---------------------------------------------------------------------------
SWEEPS_HELP = (
    "Read this sweep folder only; no database needed. Repeat it to compare sweeps: one "
    "table, whose 'sweep' column names each row's folder."
)
SWEEP_FOLDERS = click.option("--sweep", "sweeps", multiple=True, metavar="DIR", help=SWEEPS_HELP)
BEST_HELP = (
    "Only the best rows by METRIC (by METRIC_mean with --group-by), best first; with "
    "several --sweep, the best of each."
)
BEST = click.option("--best", metavar="METRIC", help=BEST_HELP)
TOP = click.option(
    "--top", type=POSITIVE_INT, metavar="K", help="With --best: the K best (per sweep; default 1)."
)
BEST_MODE = _apply(
    click.option(
        "--min", "mode", flag_value="min", help="With --best: smallest is best (default)."
    ),
    click.option("--max", "mode", flag_value="max", help="With --best: largest is best."),
)


# -- which jobs ----------------------------------------------------------------------
TAG = click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="Only jobs with this tag; repeat it for jobs that carry every one.",
)
SWEEP = click.option("--sweep", metavar="ID|DIR", help="Only jobs of this sweep: its id or folder.")
FAILURE = click.option(
    "--failure",
    "failures",
    type=CommaChoice(failures.CLASSES, "failure class"),
    default=None,
    help=f"Only jobs whose last failure was of these classes ({', '.join(failures.CLASSES)}); "
    "comma-separated.",
)
SWEEP_FOLDER = click.option(
    "--sweep", metavar="DIR", help="Read this sweep folder only; no database needed."
)
JOB_ID = click.argument("job_id", metavar="ID", type=JobId())


def _flatten_ids(_ctx: click.Context, _param: click.Parameter, value: Sequence[tuple]) -> list:
    return list(dict.fromkeys(i for token in value for i in token))


def status_option(
    allowed: Optional[Sequence[str]] = None, verb: str = "", everything: Optional[str] = None
) -> Decorator:
    """--status, a comma-separated list; ``allowed`` is what the command may act on."""
    kind = CommaChoice(defaults.STATUSES, "status", everything, allowed, verb)
    return click.option(
        "--status",
        "statuses",
        type=kind,
        default=everything,
        help=f"Only jobs in these states ({', '.join(allowed or defaults.STATUSES)}"
        f"{', ' + everything if everything else ''}); comma-separated.",
    )


SELECTION_HELP = (
    "Name jobs by their ids (3 5,6 7-9), or select them with --status, --tag, --sweep, "
    "--failure and --experiment: the command acts on the jobs that match all of them. A job named by its "
    "id that cannot take the action is an error, and then nothing changes."
)


@dataclass
class Selection:
    """What a cancel/retry/priority command was told to act on."""

    ids: list[int]
    statuses: Optional[tuple]
    tags: tuple
    sweep: Optional[str]
    failures: Optional[tuple]

    def jobs(self, db: JobDB, allowed: Sequence[str], verb: str) -> tuple[list[int], bool]:
        return select_jobs(
            db, self.ids, self.statuses, self.tags, self.sweep, allowed, verb, self.failures
        )


def selectors(allowed: Sequence[str], verb: str) -> Decorator:
    """Job ids (``3 5,6 7-9``) and the filters --status, --tag, --sweep and --failure,
    handed to the command as one ``selection``."""
    ids = click.argument("ids", nargs=-1, type=JobIdList(), callback=_flatten_ids)

    def bundle(f: F) -> F:
        @functools.wraps(f)
        def command(ids: list, statuses: Any, tags: tuple, sweep: Any, failures: Any, **rest: Any):
            return f(Selection(ids, statuses, tags, sweep, failures), **rest)

        return command  # type: ignore[return-value]

    return _apply(ids, status_option(allowed, verb), TAG, SWEEP, FAILURE, bundle)


def select_jobs(
    db: JobDB,
    ids: Sequence[int],
    statuses: Optional[Sequence[str]],
    tags: Sequence[str],
    sweep: Optional[str],
    allowed: Sequence[str],
    verb: str,
    failure: Optional[Sequence[str]] = None,
) -> tuple[list[int], bool]:
    """The jobs a cancel/retry/priority command acts on, and whether ids named them."""
    if not (ids or tags or statuses or sweep or failure):
        raise click.UsageError(
            f"say which jobs to {verb}: ids, --tag, --status, --sweep or --failure"
        )
    if ids:
        known = {j["id"] for j in db.list_jobs(ids=ids)}
        missing = [i for i in ids if i not in known]
        if missing:
            raise BadInput(f"no job with id {missing[0]}")
    rows = db.list_jobs(
        ids=list(ids) or None,
        statuses=list(statuses or ()) or (None if ids else list(allowed)),
        experiment=scope().experiment,
        tags=list(tags) or None,
        sweep_ids=db.sweeps_named(sweep) if sweep else None,
        failures=list(failure) if failure else None,
    )
    return [r["id"] for r in rows], bool(ids)


# -- workers, leases and the node supervisor --------------------------------------------
def seconds(flag: str, default: Optional[float], text: str, positive: bool = False) -> Decorator:
    """A duration option: a finite number of seconds (more than 0 with ``positive``)."""
    kind = POSITIVE_SECONDS if positive else SECONDS
    return click.option(flag, type=kind, default=default, help=text)


def number(flag: str, default: Optional[int], text: str) -> Decorator:
    """A count option: a whole number of 1 or more."""
    return click.option(flag, type=POSITIVE_INT, metavar="N", default=default, help=text)


IDLE_TIMEOUT = seconds(
    "--idle-timeout",
    defaults.WORKER_IDLE_TIMEOUT_S,
    "A worker exits after the queue has been empty this many seconds; 0: never.",
)
GRACE = seconds(
    "--grace", defaults.GRACE_S, "Seconds a signalled job gets to exit before it is killed."
)
MAX_JOBS = click.option(
    "--max-jobs", type=POSITIVE_INT, metavar="N", default=None, help="Exit after N jobs."
)
LEASE = seconds(
    "--lease",
    defaults.LEASE_S,
    "Seconds a claim (a job, or a folder being uploaded) stays ours without a renewal; "
    "when it runs out, another worker or uploader takes it over.",
    positive=True,
)
HEARTBEAT = seconds(
    "--heartbeat",
    defaults.HEARTBEAT_S,
    "Seconds between lease renewals (and worker heartbeats); shorter than --lease.",
    positive=True,
)
MAX_HOURS = click.option(
    "--max-hours",
    type=HOURS,
    default=None,
    help="Time budget of this allocation: stop taking jobs when less than "
    "--reserve-minutes of it is left.",
)
RESERVE_MINUTES = click.option(
    "--reserve-minutes",
    type=MINUTES,
    default=0.0,
    help="With --max-hours: stop taking new jobs this many minutes before the budget ends.",
)
STOP_CLAIMING_AT = click.option(
    "--stop-claiming-at", type=TIMESTAMP, default=None, hidden=True
)  # a supervisor hands its workers its own deadline
WORKERS_PER_GPU = click.option(
    "--workers-per-gpu", type=POSITIVE_INT, metavar="N", default=1, help="Workers per GPU."
)
CPU_WORKERS = click.option(
    "--cpu-workers",
    type=POSITIVE_INT,
    metavar="N",
    default=None,
    help="Workers to run when no GPU is visible (default: --workers-per-gpu).",
)
CRASH_LIMIT = click.option(
    "--crash-limit",
    type=POSITIVE_INT,
    metavar="N",
    default=defaults.CRASH_LIMIT,
    help="Failed worker exits within --crash-window that stop restarting that worker slot.",
)
CRASH_WINDOW = seconds(
    "--crash-window", defaults.CRASH_WINDOW_S, "Seconds over which crashes are counted.", True
)

lease_options = _apply(LEASE, HEARTBEAT)
worker_options = _apply(
    IDLE_TIMEOUT, GRACE, MAX_JOBS, lease_options, MAX_HOURS, RESERVE_MINUTES, STOP_CLAIMING_AT
)
supervisor_options = _apply(
    WORKERS_PER_GPU,
    CPU_WORKERS,
    MAX_HOURS,
    RESERVE_MINUTES,
    IDLE_TIMEOUT,
    GRACE,
    lease_options,
    CRASH_LIMIT,
    CRASH_WINDOW,
)


def check_lease(lease: float, heartbeat: float) -> None:
    """A lease must outlast several heartbeats, or one late beat loses the claim."""
    if lease <= heartbeat:
        raise BadInput("--lease must be longer than --heartbeat (several missed beats)")


def claim_deadline(
    max_hours: Optional[float], reserve_minutes: float, stop_claiming_at: Optional[float] = None
) -> Optional[float]:
    """When to stop taking new jobs (epoch seconds), or None for never."""
    if stop_claiming_at is not None:
        return stop_claiming_at
    if max_hours is None:
        return None
    return time.time() + max_hours * 3600 - reserve_minutes * 60


# -- SLURM ---------------------------------------------------------------------------
def _setup_lines(_ctx: click.Context, _param: click.Parameter, value: tuple) -> Optional[list]:
    return list(value) or None


def _additional(_ctx: click.Context, _param: click.Parameter, value: tuple) -> dict:
    return dict(value)


slurm_options = _apply(
    click.option(
        "--array",
        type=POSITIVE_INT,
        metavar="N",
        required=True,
        help="Number of array tasks to submit.",
    ),
    click.option("--partition", help="SLURM partition."),
    click.option("--qos", help="SLURM quality of service."),
    click.option("--account", help="SLURM account."),
    click.option(
        "--gpus-per-node", type=COUNT, metavar="N", default=None, help="GPUs per array task."
    ),
    click.option(
        "--cpus-per-task", type=POSITIVE_INT, metavar="N", default=None, help="CPUs per array task."
    ),
    click.option(
        "--mem-gb", type=POSITIVE_INT, metavar="N", default=None, help="Memory per array task, GB."
    ),
    number("--timeout-min", defaults.TIMEOUT_MIN, "Time limit of each array task, minutes."),
    number("--array-parallelism", defaults.ARRAY_PARALLELISM, "Array tasks that may run at once."),
    click.option("--name", default=None, help="SLURM job name (default: dr_exp-<experiment>)."),
    click.option(
        "--folder",
        default=None,
        metavar="DIR",
        help="submitit folder for logs (default: <database folder>/slurm/%j).",
    ),
    click.option(
        "--setup",
        multiple=True,
        callback=_setup_lines,
        metavar="LINE",
        help="A shell line to run before the supervisor; repeatable.",
    ),
    click.option(
        "--additional",
        multiple=True,
        type=KeyValue(),
        callback=_additional,
        help="An extra sbatch parameter, e.g. --additional constraint=a100; repeatable.",
    ),
)


# -- the sync queue --------------------------------------------------------------------
QUEUE = click.option(
    "--queue",
    metavar="FILE",
    default=None,
    help=f"The sync queue (default: ${paths.ENV_SYNC_QUEUE}, else {paths.SYNC_QUEUE_NAME} "
    "next to the job database).",
)
POLL = seconds(
    "--poll", defaults.SYNC_POLL_S, "Seconds between looks at the queue when following it.", True
)
SYNC_STATE = click.option(
    "--state",
    "states",
    type=CommaChoice(SYNC_STATES, "state"),
    default=None,
    help=f"Only folders in these states ({', '.join(SYNC_STATES)}; comma-separated); "
    "default: all but uploaded in the table, all in JSON.",
)


# -- command classes -------------------------------------------------------------------
class OrderedGroup(click.Group):
    """A group whose --help lists its commands in the order they were added, not sorted,
    and that shows its help with exit status 2 when its command is missing."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            click.echo(ctx.get_help())
            ctx.exit(2)
        return super().parse_args(ctx, args)


class SpreadCommand(click.Command):
    """A command with options that take several values, as ``--seed 0 1 2``.

    click options take a fixed number of values, so before parsing, ``--seed 0 1 2``
    becomes ``--seed 0 --seed 1 --seed 2`` (of a ``multiple=True`` option).  The
    values end at the next option, ``--``, or a ``key=value`` override.
    """

    def __init__(self, *args: Any, spread: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spread = tuple(spread)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(args):
            token = args[i]
            out.append(token)
            i += 1
            if token == "--":
                out += args[i:]
                break
            if token in self.spread:
                first = True
                while i < len(args) and _a_value(args[i]):
                    if not first:
                        out.append(token)
                    out.append(args[i])
                    first = False
                    i += 1
        return super().parse_args(ctx, out)


def _a_value(token: str) -> bool:
    if "=" in token:
        return False
    if token.startswith("-"):
        return token[1:].replace(".", "", 1).isdigit()  # a negative number is a value
    return True
