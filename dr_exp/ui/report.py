"""``dr_exp report``: a sweep's results as one self-contained HTML file.

The file holds everything inline: the data, our CSS and JavaScript, and
plotly.js from the ``plotly`` wheel.  Its Content-Security-Policy lets it load
nothing at all, so it opens the same on a laptop with the network off, and it
can be mailed.  It draws the same sweep view as the dashboard's sweep page
(``static/dr_exp.js`` over :func:`dr_exp.ui.analysis.analyse`).

``--sweep DIR`` reads the folder alone (a synced copy; no database);
``--experiment E`` lists the jobs from the database and reads their folders.
"""

from __future__ import annotations

from pathlib import Path

from dr_exp import jobfiles, results
from dr_exp.db import JobDB
from dr_exp.errors import BadInput
from dr_exp.ui import assets
from dr_exp.ui.analysis import analyse


def from_sweep_dir(sweep_dir: Path) -> dict:
    """The sweep view's data from a sweep folder and nothing else."""
    folder = Path(sweep_dir).expanduser().resolve()
    table = results.load(sweep_dir=folder)
    title = f"sweep {folder.parent.name}/{folder.name}"  # Hydra's <date>/<time>
    return analyse(table, title=title, source=str(folder), sweep_dir=folder)


def from_experiment(db_path: Path, experiment: str) -> dict:
    """The sweep view's data for every job of ``experiment`` in the database."""
    with JobDB.open(db_path, create=False) as db:
        jobs = {j["id"]: j for j in db.list_jobs(experiment=experiment)}
    if not jobs:
        raise BadInput(f"no jobs in experiment {experiment!r} in {db_path}")
    table = results.load(experiment=experiment, db=db_path)
    return analyse(table, title=f"experiment {experiment}", source=str(db_path), jobs=jobs)


def render(data: dict) -> str:
    """The report's HTML: one file, with its data, code and styles inline."""
    return (
        assets.templates()
        .get_template("report.html")
        .render(
            title=data["title"],
            csp=assets.REPORT_CSP,
            css=assets.inline_text("style.css"),
            data=assets.script_json(data),
            plotly=assets.inline_text(assets.PLOTLY),
            script=assets.inline_text("dr_exp.js"),
        )
    )


def write(data: dict, output: Path) -> int:
    """Write the report atomically (a reader never sees half of it); returns its size."""
    html = render(data).encode()
    try:
        jobfiles.write_bytes(str(output), html)
    except OSError as e:
        raise BadInput(f"cannot write {output}: {e.strerror}") from None
    return len(html)
