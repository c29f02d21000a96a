"""The files the dashboard and the report run in the browser, all of them local.

Our CSS and JavaScript ship in ``dr_exp/ui/static/``.  plotly.js comes from the
``plotly`` Python wheel (``plotly/package_data/plotly.min.js``, MIT), found
without importing the plotly package.  Pages refer to nothing on another host,
and their Content-Security-Policy forbids the browser to load from one.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

from dr_exp.ui import INSTALL_HINT, MissingExtra

STATIC = Path(__file__).parent / "static"
TEMPLATES = Path(__file__).parent / "templates"
PLOTLY = "plotly.min.js"
# The browser may load scripts, styles, images and data from this server only.  Plotly
# draws with inline styles and data: images, so those two are allowed.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The report is one file: its code is inline, and it may load nothing at all.
REPORT_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)


def plotly_js() -> Path:
    """plotly.min.js inside the installed ``plotly`` wheel."""
    spec = importlib.util.find_spec("plotly")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "package_data" / PLOTLY
        if path.is_file():
            return path
    raise MissingExtra(f"plotly.js was not found (the plotly package): {INSTALL_HINT}")


def templates() -> Any:
    """The Jinja environment of ``templates/``: HTML-escaped unless marked safe."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def static_file(name: str) -> Path:
    return STATIC / name


@cache
def inline_text(name: str) -> str:
    """An asset's text, made safe to sit inside an inline <script> or <style> element."""
    path = plotly_js() if name == PLOTLY else static_file(name)
    return re.sub(r"</(script|style)", r"<\\/\1", path.read_text(), flags=re.IGNORECASE)


def plain(value: Any) -> Any:
    """``value`` with NaN and infinities as None, so that it is valid JSON for the browser."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item"):  # a numpy or pandas scalar
        return plain(value.item())
    return value


def to_json(value: Any) -> str:
    return json.dumps(plain(value), allow_nan=False, default=str)


def script_json(value: Any) -> str:
    """JSON to embed in ``<script type="application/json">``: no ``<`` can end the element."""
    return to_json(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
