"""The ``dr_exp`` command line: watch the queue, list jobs, run workers, manage jobs.

The modules, one per noun, none importing another in a cycle:

- :mod:`.options`: every shared option, declared once, and the parameter types;
- :mod:`.render`: tables, durations, ISO times, JSON and CSV;
- :mod:`.jobs`: ``status``, ``list``, ``show``, ``logs``, ``results``;
- :mod:`.manage`: ``cancel``, ``retry``, ``priority``, ``submit``;
- :mod:`.workers`: ``worker``, ``system launcher|worker``, ``workers submit``;
- :mod:`.sync`: ``sync status|run|retry`` and the sync line of ``status``;
- :mod:`.reference`: docs/cli.md, generated from these commands.

Errors: a :class:`~dr_exp.errors.UserError` is one line, ``dr_exp: error: ...``,
and exit status 1; a usage error (a bad option value, an unknown command, a
missing argument) is one line too, and exit status 2.  Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn, Optional, Sequence

import click

from dr_exp.cli import jobs, manage, options, sync, ui, workers
from dr_exp.cli.notify import notify
from dr_exp.errors import UserError

EXAMPLES = (
    ("python train.py -m optim.lr=0.01,0.1 seed=0,1,2 hydra/launcher=dr_exp", ""),
    ("dr_exp status", "counts per experiment, running jobs, workers"),
    ("dr_exp list --status failed", "what went wrong, with error summaries"),
    ("dr_exp list --format json", "every job, for scripts"),
    ("dr_exp worker --experiment train", "drain the queue from another shell or node"),
    ("dr_exp show 12", "one job: config, attempts, error, log, events"),
    ("dr_exp cancel --tag probe", "cancel pending and running jobs by tag"),
    ("dr_exp retry --status failed", "queue failed jobs again"),
    ("dr_exp priority --tag main --boost 100", ""),
    ("dr_exp results --experiment train --group-by optim.lr", ""),
    ("dr_exp --base-path P -e E submit --config baseline.yaml --seed 0 1 2", ""),
    ("dr_exp system launcher --workers-per-gpu 3 --max-hours 46", ""),
    ("dr_exp sync status", "uploads of finished folders: pending, failing"),
)


def _epilog() -> str:
    width = max(len(cmd) for cmd, why in EXAMPLES if why) + 2
    lines = [f"  {cmd.ljust(width)}# {why}".rstrip(" #") for cmd, why in EXAMPLES]
    # \b keeps click from re-wrapping the paragraph that follows it.
    return "\b\nExamples:\n" + "\n".join(lines) + "\n\n" + options.DB_RULE


def _terminal_width() -> int:
    """What click's help would ask shutil for ($COLUMNS, else the terminal, else 80), without
    importing shutil: it loads the bz2 and lzma modules, felt at every ``--help``."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80


def _one_line(message: str) -> str:
    """click's messages may hold newlines and tabs; an error is always one line."""
    return " ".join(message.split())


class Root(options.OrderedGroup):
    """The ``dr_exp`` group: one-line errors, quiet broken pipes, exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            rv = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return rv
        except BrokenPipeError:  # `dr_exp list | head`
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise click.exceptions.Exit(0) from None
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None

    def main(  # type: ignore[override]
        self,
        args: Optional[Sequence[str]] = None,
        prog_name: Optional[str] = None,
        complete_var: Optional[str] = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> NoReturn:
        """Run one command and exit with its status; ``standalone_mode`` is ignored."""
        extra.setdefault("terminal_width", _terminal_width())
        try:
            rv = super().main(
                args, prog_name or self.name, complete_var, standalone_mode=False, **extra
            )
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx else self.name
            click.echo(
                f"{where}: error: {_one_line(e.format_message())} (see {where} --help)", err=True
            )
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"{self.name}: error: {_one_line(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:  # Ctrl-C while click itself was reading input
            sys.exit(130)
        except UserError as e:
            click.echo(f"{self.name}: error: {_one_line(str(e))}", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(
    "dr_exp",
    cls=Root,
    epilog=_epilog(),
    context_settings={
        "help_option_names": ["-h", "--help"],
        "show_default": True,
        "max_content_width": 100,
    },
)
@options.common
def cli() -> None:
    """A durable SQLite job queue behind a Hydra launcher (hydra/launcher=dr_exp).

    Every command takes --db, --experiment (-e) and --base-path, before or after its
    name; the command's own value wins."""


for command in (
    jobs.status,
    jobs.list_,
    jobs.show,
    jobs.logs,
    jobs.results,
    manage.cancel,
    manage.retry,
    manage.priority,
    manage.submit,
    workers.worker,
    workers.system,
    workers.workers,
    sync.sync,
    notify,
    ui.ui,
    ui.report,
):
    cli.add_command(command)


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """The console script ``dr_exp`` (and ``python -m dr_exp``)."""
    cli.main(args=list(argv) if argv is not None else None)
