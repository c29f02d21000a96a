"""docs/cli.md, generated from the click commands so that it cannot drift from them.

    python -m dr_exp.cli.reference > docs/cli.md

Each command's section is its ``--help`` text at a fixed width; a test
compares the committed file with this output.
"""

from __future__ import annotations

import re
import sys
from typing import Iterator

import click

from dr_exp import paths
from dr_exp.cli import cli

WIDTH = 100
DB = f"{paths.DB_DIR}/{paths.DB_NAME}"
HEADER = f"""\
# The dr_exp command line

Generated from the commands themselves by `python -m dr_exp.cli.reference > docs/cli.md`;
do not edit it by hand (a test checks that it is current). Each section is the command's
`--help`.

- **Database.** Every command finds the job database the same way: `--db`, else
  `P/{DB}` with `--base-path P`, else `${paths.ENV_DB}`, else `{DB}`
  in the current directory. The sync queue is `--queue`, else `${paths.ENV_SYNC_QUEUE}`,
  else `{paths.SYNC_QUEUE_NAME}` next to the job database.
- **Common options.** `--db`, `--experiment` (`-e`) and `--base-path` go before or after
  the command's name (`dr_exp --db X status` or `dr_exp status --db X`); the value after
  it wins.
- **Errors.** A bad argument is one line on stderr, `dr_exp list: error: ... (see dr_exp
  list --help)`, with exit status 2; a state you must fix (no database, no such job) is one
  line, `dr_exp: error: ...`, with exit status 1. Neither changes anything.
"""


def _walk(ctx: click.Context) -> Iterator[click.Context]:
    yield ctx
    command = ctx.command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(click.Context(sub, info_name=name, parent=ctx))


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def render() -> str:
    """The whole of docs/cli.md."""
    settings = dict(cli.context_settings, terminal_width=WIDTH, max_content_width=WIDTH)
    root = click.Context(cli, info_name="dr_exp", **settings)
    contexts = list(_walk(root))
    out = [HEADER, "## Commands", ""]
    for ctx in contexts[1:]:
        path = ctx.command_path
        out.append(f"- [`{path}`](#{_anchor(path)}): {ctx.command.get_short_help_str(WIDTH)}")
    for ctx in contexts:
        out += ["", f"## {ctx.command_path}", "", "```text", ctx.get_help(), "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
