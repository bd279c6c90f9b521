"""See a ``.pt2``: an interactive, self-contained HTML view of its graph, and static pictures.

Nothing here imports torch or reads weight bytes: the view is built from the program JSON alone,
so it opens files from every torch release the reader takes, whatever torch is installed.

* :func:`graph_data`: the graph as plain JSON data (modules, nodes, edges, weights, traces).
* :func:`write_html` / :func:`html_document`: the page, one file with its script, styles and
  data inline (no network), grouped by module with boxes that open and close, search, and a
  panel with each node's arguments, values and source line.
* :func:`module_tree_svg` / :func:`svg_to_png`: a static picture of the module tree, for docs
  and bug reports (PNG through a headless Chromium).

>>> import importlib.resources as r, pathlib, tempfile
>>> out = pathlib.Path(tempfile.mkdtemp()) / "tiny_mlp.html"
>>> write_html(r.files("pt2interp.examples") / "tiny_mlp.pt2", out).stat().st_size > 10_000
True
"""

from pt2interp.graphview.graph_data import graph_data
from pt2interp.graphview.page import html_document, page_from_data, write_html
from pt2interp.graphview.tree_svg import RenderError, module_tree_svg, svg_to_png

__all__ = [
    "RenderError",
    "graph_data",
    "html_document",
    "module_tree_svg",
    "page_from_data",
    "svg_to_png",
    "write_html",
]
