"""See the experiment: the local web dashboard (``dr_exp ui``) and the one-file report
(``dr_exp report``).

- :mod:`.analysis`: the numbers behind a sweep's tables and plots, read from the
  output folders (``dr_exp.results``) and their ``events.jsonl``; shared by both;
- :mod:`.assets`: the CSS and JavaScript both pages run, shipped in this package,
  and plotly.js, served from the ``plotly`` wheel: nothing comes from the internet;
- :mod:`.server`: the dashboard, a Starlette app over the job database;
- :mod:`.report`: the self-contained HTML file.

Everything here needs the ``ui`` extra (``pip install 'dr_exp[ui]'``): the core, the
workers and ``dr_exp --help`` never import this package.
"""

from __future__ import annotations

import importlib.util

from dr_exp.errors import UserError

INSTALL_HINT = "pip install 'dr_exp[ui]'"
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # names of this machine only it can reach
SERVER = ("starlette", "uvicorn", "jinja2", "pandas", "plotly")  # dr_exp ui
REPORT = ("jinja2", "pandas", "plotly")  # dr_exp report


class MissingExtra(UserError):
    """The ``ui`` extra is not installed (reported as one line)."""


def require(modules: tuple[str, ...]) -> None:
    """Fail in one line, naming the extra, when a module that the ui needs is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"this needs {', '.join(missing)}: {INSTALL_HINT}")
