"""The self-contained HTML page: the view's script, styles and the graph data in one file.

Nothing is fetched when the page opens (no network, no CDN), so it works offline, from a mail
attachment or a CI artifact. The data sits in a ``<script type="application/json">`` element,
which a browser never runs, with ``<``, ``>`` and ``&`` written as JSON escapes so no name from
the archive can close the element. A Content-Security-Policy admits only the page's own script
and styles (by hash): even a name that somehow became markup could not run.

>>> import importlib.resources as r
>>> page = html_document(r.files("pt2interp.examples") / "tiny_mlp.pt2")
>>> page.startswith("<!DOCTYPE html>"), "https://" in page.split("<style>")[0]
(True, False)
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import jinja2
from markupsafe import Markup

from pt2interp.archive import Archive
from pt2interp.graphview.graph_data import graph_data
from pt2interp.program import Program

__all__ = ["html_document", "page_from_data", "write_html"]

_STATIC = importlib.resources.files("pt2interp.graphview") / "static"

# "</script>", "<!--" and the line separators JavaScript once refused in strings, as escapes
_JSON_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def html_document(
    source: str | os.PathLike | BinaryIO | Archive | Program, *, model: str | None = None
) -> str:
    """The page for one model of a ``.pt2``, as text."""
    return page_from_data(graph_data(source, model=model))


def write_html(
    source: str | os.PathLike | BinaryIO | Archive | Program,
    output: str | os.PathLike,
    *,
    model: str | None = None,
) -> Path:
    """Write the page to ``output`` and return its path."""
    path = Path(output)
    path.write_text(html_document(source, model=model), encoding="utf-8")
    return path


def page_from_data(data: dict[str, Any]) -> str:
    script = _static("graph.js")
    css = _static("graph.css")
    # ASCII only: a lone surrogate from a file's JSON escapes could not be written as UTF-8
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    program = data.get("program", {})
    title = program.get("file") or program.get("model") or "model"
    return _template().render(
        title=title,
        version=_version(),
        # ours, inserted as they are (the CSP hashes are of these exact texts)
        css=Markup(css),
        script=Markup(script),
        data=Markup(payload.translate(_JSON_ESCAPES)),
        csp=_csp(script, css),
    )


def _csp(script: str, css: str) -> str:
    return (
        "default-src 'none'; "
        f"script-src '{_sha256(script)}'; "
        f"style-src '{_sha256(css)}'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def _static(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


def _template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=True, keep_trailing_newline=True)
    return env.from_string(_static("graph.html.j2"))


def _version() -> str:
    from pt2interp import __version__

    return __version__
