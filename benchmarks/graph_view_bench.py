"""How fast ``pt2interp graph`` builds its HTML view, and how fast the page opens and answers in a
browser, for a GPT-2-small-sized model and for 50,000-node synthetic graphs.

    python -m benchmarks.graph_view_bench            # GPT (~109M parameters), 50k nested, 50k flat
    python -m benchmarks.graph_view_bench --quick    # small GPT, 5k-node graphs (smoke run)
    python -m benchmarks.graph_view_bench --json figures.json --keep-html out/

Cases:

* ``gpt``: a GPT-2-small-like decoder (12 layers, d_model 768, 12 heads, MLP 3072, vocab 30522,
  context 512, learned positions, tied input/output embeddings: 108,890,112 parameters, 436 MB)
  built in torch, exported with ``torch.export.export`` (token ids ``[2, seq]`` with ``seq`` a
  dynamic dim, 2..512) and saved with ``torch.export.save`` into ``--cache`` (default
  ``$PT2INTERP_CACHE/bench/``, i.e. ``~/.cache/pt2interp/bench/``); later runs reuse it. The
  reference point for it is ``torch.export.load`` of the same file (best of ``--repeats``).
* ``50k nested`` / ``50k flat``: ``benchmarks/big_graph.py`` archives of 50,000 nodes, nested
  four modules deep (``stages.i.blocks.j.layers.k.act|mix``) or all in the root module.

For each: seconds for ``pt2interp.graphview.write_html`` (best of ``--repeats``) and the HTML's
size; then, in headless Chromium driven by Playwright (the system ``/usr/bin/chromium``, a fresh
browser context per case):

* ``open``: wall time from ``page.goto(file://...)`` until the page says
  ``document.documentElement.dataset.state === "ready"``, with the page's own
  ``pt2graph.timings`` (parse / layout / render ms) and its JS heap afterwards;
* ``expand``: a real click on the header of a collapsed module box (``h.0``, one GPT block;
  ``stages.0``; else the first one on screen), until that box carries the class ``expanded``;
* ``search``: filling ``#search`` with a broad term (many hits) until ``#search-results`` lists
  them (the page waits 120 ms after the last keystroke; that is counted);
* ``reveal``: searching a node's exact name, then clicking its result, until the node is drawn
  (``g.node[data-node=...]``) and ``#details`` names it. The node is two thirds down the graph,
  the deepest in modules there (in a module that starts collapsed, where there are modules);
* ``Expand``: a click on the toolbar's Expand button (one more level of every open box, up to
  a few thousand boxes: the most one click draws), until the number of boxes drawn changes;
* ``reveal after``: another reveal (a node a third down the graph) with all of that drawn: what
  any interaction costs once the page is full.

Targets (PASS/MISS per row): the GPT opens in under 2 s; the 50k graphs are "usable": open in
under 5 s; every interaction (each of the five above) under 1 s in every case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(REPO))

from benchmarks.big_graph import write_big_archive  # noqa: E402
from benchmarks.read_schema_bench import cache_dir  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
OPEN_TARGET_S = {"gpt": 2.0, "big": 5.0}
INTERACTION_TARGET_S = 1.0
PAGE_TIMEOUT_MS = 300_000


# ---------------------------------------------------------------------------------------
# the GPT
# ---------------------------------------------------------------------------------------

GPT_FULL = {"vocab": 30522, "context": 512, "d_model": 768, "layers": 12, "heads": 12}
GPT_QUICK = {"vocab": 1000, "context": 64, "d_model": 64, "layers": 2, "heads": 4}


def gpt_module(vocab: int, context: int, d_model: int, layers: int, heads: int):
    """A GPT-2-style decoder (pre-LayerNorm blocks, causal SDPA, GELU MLP, tied embeddings)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(d_model, 3 * d_model)
            self.c_proj = nn.Linear(d_model, d_model)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.c_attn(x).split(c, dim=2)
            q, k, v = (z.view(b, t, heads, c // heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).reshape(b, t, c))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(d_model, 4 * d_model)
            self.act = nn.GELU(approximate="tanh")
            self.c_proj = nn.Linear(4 * d_model, d_model)

        def forward(self, x):
            return self.c_proj(self.act(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(d_model)
            self.attn = CausalSelfAttention()
            self.ln_2 = nn.LayerNorm(d_model)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, d_model)
            self.wpe = nn.Embedding(context, d_model)
            self.h = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(d_model)
            self.lm_head = nn.Linear(d_model, vocab, bias=False)
            self.lm_head.weight = self.wte.weight  # tied, as in GPT-2

        def forward(self, idx):
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    torch.manual_seed(0)
    return GPT().eval()


def gpt_parameter_count(vocab: int, context: int, d_model: int, layers: int, heads: int) -> int:
    """Parameters of :func:`gpt_module` (tied embeddings counted once), by formula."""
    d = d_model
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return vocab * d + context * d + layers * block + 2 * d


def gpt_archive(cache: Path, cfg: dict) -> Path:
    """The exported GPT of ``cfg`` in ``cache``, exported and saved on first use."""
    import torch

    tag = "_".join(f"{k}{v}" for k, v in cfg.items())
    path = cache / f"gpt_{tag}_torch{torch.__version__.split('+')[0]}.pt2"
    if path.exists():
        return path
    print(f"exporting the GPT into {path} (once) ...", file=sys.stderr)
    module = gpt_module(**cfg)
    count = sum(p.numel() for p in module.parameters())
    assert count == gpt_parameter_count(**cfg), (count, gpt_parameter_count(**cfg))
    idx = torch.randint(0, cfg["vocab"], (2, min(128, cfg["context"])))
    seq = torch.export.Dim("seq", min=2, max=cfg["context"])
    with torch.no_grad():
        ep = torch.export.export(module, (idx,), dynamic_shapes={"idx": {1: seq}})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".partial-" + path.name)
    torch.export.save(ep, tmp)
    os.replace(tmp, path)  # only a complete archive ever has the final name
    return path


def torch_load_seconds(path: Path, repeats: int) -> float:
    import warnings

    import torch

    times = []
    for _ in range(repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            torch.export.load(path)
            times.append(time.perf_counter() - t)
    return min(times)


# ---------------------------------------------------------------------------------------
# the view
# ---------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    kind: str  # "gpt" or "big"
    path: Path
    search: str  # a broad search term
    expand: str | None  # the module to expand, if the page has it collapsed
    reveal: str = ""  # a node two thirds down the graph, deep in modules
    reveal_late: str = ""  # one a third down, revealed after the toolbar's Expand
    figures: dict = field(default_factory=dict)

    def __post_init__(self):
        from pt2interp.program import read_program

        nodes = list(read_program(self.path, outline=True).graph.iter_nodes())
        self.figures["nodes"] = len(nodes)

        def deepest_from(start: int) -> str:
            return max(nodes[start:], key=lambda n: len(n.nn_module_stack)).name

        self.reveal = deepest_from((2 * len(nodes)) // 3)
        self.reveal_late = deepest_from(len(nodes) // 3)


def build_html(case: Case, out_dir: Path, repeats: int) -> Path:
    from pt2interp.graphview import write_html

    html = out_dir / f"{case.path.stem}.html"
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        write_html(case.path, html)
        times.append(time.perf_counter() - t)
    case.figures["write_html_s"] = min(times)
    case.figures["write_html_all_s"] = times
    case.figures["html_mb"] = html.stat().st_size / 1e6
    return html


_BOXES = "document.querySelectorAll('#graph g.node, #graph g.container').length"
_READY = "['ready', 'error'].includes(document.documentElement.dataset.state)"
_FIRST_COLLAPSED = """() => {
  for (const g of document.querySelectorAll('g.container.collapsed[data-path]')) {
    const h = g.querySelector(':scope > .header');
    const r = h && h.getBoundingClientRect();
    if (r && r.width > 0 && r.height > 0 && r.bottom > 0 && r.right > 0
        && r.top < innerHeight && r.left < innerWidth) return g.dataset.path;
  }
  const any = document.querySelector('g.container.collapsed[data-path]');
  return any ? any.dataset.path : null;
}"""


def _css_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _reveal(page, name: str) -> float:
    """Search ``name``, click its result; seconds from the click until the node is drawn and
    the details panel names it."""
    item = f"#search-results li[data-node={_css_string(name)}]"
    page.fill("#search", name, timeout=PAGE_TIMEOUT_MS)
    page.wait_for_selector(item, timeout=PAGE_TIMEOUT_MS)
    t = time.perf_counter()
    page.locator(item).first.click(timeout=PAGE_TIMEOUT_MS)
    page.wait_for_function(
        """name => document.querySelector(`g.node[data-node="${CSS.escape(name)}"]`)
            && (document.querySelector('#details')?.textContent ?? '').includes(name)""",
        arg=name,
        timeout=PAGE_TIMEOUT_MS,
        polling="raf",
    )
    return time.perf_counter() - t


def measure_page(browser, case: Case, html: Path) -> None:
    f = case.figures
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on(
        "console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else 0
    )
    try:
        t = time.perf_counter()
        page.goto(html.as_uri(), timeout=PAGE_TIMEOUT_MS)
        f["goto_s"] = time.perf_counter() - t  # the load event
        page.wait_for_function(_READY, timeout=PAGE_TIMEOUT_MS, polling=50)
        f["open_s"] = time.perf_counter() - t
        state = page.evaluate("document.documentElement.dataset.state")
        if state != "ready":
            f["error"] = page.evaluate("document.querySelector('#error')?.textContent ?? ''")
            return
        f["timings"] = page.evaluate("window.pt2graph && window.pt2graph.timings")
        f["heap_mb"] = page.evaluate(
            "performance.memory ? performance.memory.usedJSHeapSize / 1e6 : null"
        )
        f["dom_elements"] = page.evaluate("document.getElementsByTagName('*').length")

        # expand: a real click on a collapsed module's header
        path = case.expand
        if path is None or not page.evaluate(
            "s => !!document.querySelector(s)",
            f"g.container.collapsed[data-path={_css_string(path)}]",
        ):
            path = page.evaluate(_FIRST_COLLAPSED)
        f["expand_path"] = path
        if path is not None:
            sel = f"g.container[data-path={_css_string(path)}]"
            t = time.perf_counter()
            page.locator(f"{sel} > .header").click(timeout=PAGE_TIMEOUT_MS)
            page.wait_for_function(
                "s => document.querySelector(s)?.classList.contains('expanded')",
                arg=sel,
                timeout=PAGE_TIMEOUT_MS,
                polling="raf",
            )
            f["expand_s"] = time.perf_counter() - t

        # search: a broad term, until results are listed
        t = time.perf_counter()
        page.fill("#search", case.search, timeout=PAGE_TIMEOUT_MS)
        page.wait_for_function(
            "() => document.querySelectorAll('#search-results li[data-node]').length > 0",
            timeout=PAGE_TIMEOUT_MS,
            polling="raf",
        )
        f["search_s"] = time.perf_counter() - t
        f["search_hits"] = page.evaluate(
            "document.querySelectorAll('#search-results li[data-node]').length"
        )

        # reveal: one node's exact name, then a click on its result
        f["reveal_s"] = _reveal(page, case.reveal)

        # the toolbar's Expand: one more level of every open box (the most it ever draws)
        before = page.evaluate(_BOXES)
        t = time.perf_counter()
        page.click("#expand", timeout=PAGE_TIMEOUT_MS)
        page.wait_for_function(
            f"n => {_BOXES} !== n", arg=before, timeout=PAGE_TIMEOUT_MS, polling="raf"
        )
        f["expand_level_s"] = time.perf_counter() - t
        f["boxes_before_after"] = [before, page.evaluate(_BOXES)]

        # reveal again, now that the page draws thousands of boxes
        f["reveal_after_expand_s"] = _reveal(page, case.reveal_late)
    except Exception as exc:  # noqa: BLE001 (a timeout or a missing element is a figure too)
        f["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    finally:
        f["page_errors"] = errors[:10]
        context.close()


def verdict(case: Case) -> tuple[str, list[str]]:
    f = case.figures
    why = []
    if "error" in f:
        return "MISS", [f["error"]]
    target = OPEN_TARGET_S[case.kind]
    if f.get("open_s", float("inf")) >= target:
        why.append(f"open {f.get('open_s', float('nan')):.2f} s >= {target:g} s")
    for key in ("expand_s", "search_s", "reveal_s", "expand_level_s", "reveal_after_expand_s"):
        if key in f and f[key] >= INTERACTION_TARGET_S:
            why.append(f"{key[:-2]} {f[key]:.2f} s >= {INTERACTION_TARGET_S:g} s")
    return ("MISS" if why else "PASS"), why


def _s(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(cases: list[Case]) -> str:
    head = (
        "| case | nodes | write_html s | HTML MB | open s | parse / layout / render ms "
        "| JS heap MB | expand s | search s (hits) | reveal s | Expand s (boxes) | reveal s "
        "after | target |"
    )
    lines = [head, "|" + " --- |" * 13]
    for c in cases:
        f = c.figures
        tm = f.get("timings") or {}
        pl = " / ".join(
            f"{tm[k]:.0f}" if k in tm else "-" for k in ("parse_ms", "layout_ms", "render_ms")
        )
        hits = f" ({f['search_hits']:,})" if "search_hits" in f else ""
        grew = (
            " ({:,} → {:,})".format(*f["boxes_before_after"]) if "boxes_before_after" in f else ""
        )
        verdict_text, _ = verdict(c)
        lines.append(
            f"| {c.name} | {f.get('nodes', 0):,} | {_s(f.get('write_html_s'))} "
            f"| {_s(f.get('html_mb'))} | {_s(f.get('open_s'))} | {pl} "
            f"| {_s(f.get('heap_mb'))} | {_s(f.get('expand_s'))} "
            f"| {_s(f.get('search_s'))}{hits} | {_s(f.get('reveal_s'))} "
            f"| {_s(f.get('expand_level_s'))}{grew} | {_s(f.get('reveal_after_expand_s'))} "
            f"| {verdict_text} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small GPT, 5k-node graphs")
    ap.add_argument("--nodes", type=int, help="nodes of the synthetic graphs (50000; quick 5000)")
    ap.add_argument("--cache", type=Path, help="where archives are kept (default: see the doc)")
    ap.add_argument("--repeats", type=int, default=3, help="write_html and torch load: best of")
    ap.add_argument("--cases", default="gpt,nested,flat", help="which cases, comma-separated")
    ap.add_argument("--keep-html", type=Path, help="write the pages here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    cache = args.cache or cache_dir()
    nodes = args.nodes or (5_000 if args.quick else 50_000)
    cfg = GPT_QUICK if args.quick else GPT_FULL
    wanted = set(args.cases.split(","))

    cases: list[Case] = []
    if "gpt" in wanted:
        path = gpt_archive(cache, cfg)
        params = gpt_parameter_count(**cfg)
        name = f"gpt {params / 1e6:.1f}M params"
        cases.append(Case(name, "gpt", path, "linear", "h.0"))
        cases[-1].figures["parameters"] = params
        cases[-1].figures["archive_mb"] = path.stat().st_size / 1e6
    for flat in (False, True):
        if ("flat" if flat else "nested") not in wanted:
            continue
        label = "flat" if flat else "nested"
        path = cache / f"big_graph_{nodes}_{label}.pt2"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_big_archive(path, nodes, flat=flat)
        name = f"{nodes // 1000}k {label}" if nodes % 1000 == 0 else f"{nodes} {label}"
        expand = None if flat else "stages.0"
        cases.append(Case(name, "big", path, "mul", expand))
        cases[-1].figures["archive_mb"] = path.stat().st_size / 1e6

    print(f"machine: {os.cpu_count()} CPUs; archives in {cache}", file=sys.stderr)
    if cases and cases[0].kind == "gpt":
        g = cases[0]
        g.figures["torch_export_load_s"] = torch_load_seconds(g.path, args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.keep_html or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        pages = [(c, build_html(c, out_dir, args.repeats)) for c in cases]
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--enable-precise-memory-info"]
            )
            browser_version = browser.version
            for c, html in pages:
                print(f"opening {c.name} ...", file=sys.stderr)
                measure_page(browser, c, html)
            browser.close()

    print(table(cases))
    print()
    for c in cases:
        f = c.figures
        notes = []
        if "parameters" in f:
            notes.append(f"{f['parameters']:,} parameters, archive {f['archive_mb']:.0f} MB")
        if "torch_export_load_s" in f:
            notes.append(
                f"torch.export.load {f['torch_export_load_s']:.2f} s (best of {args.repeats})"
            )
        if f.get("expand_path") is not None:
            notes.append(f"expanded {f['expand_path']!r}")
        notes.append(f"revealed {c.reveal!r}, after Expand {c.reveal_late!r}")
        if f.get("dom_elements"):
            notes.append(f"{f['dom_elements']:,} DOM elements at open")
        _, why = verdict(c)
        notes += why
        notes += f.get("page_errors", [])
        print(f"{c.name}: " + "; ".join(notes))
    print(
        f"targets: gpt opens in < {OPEN_TARGET_S['gpt']:g} s; the big graphs open in "
        f"< {OPEN_TARGET_S['big']:g} s; every interaction < "
        f"{INTERACTION_TARGET_S:g} s. Chromium {browser_version}, {os.cpu_count()} CPUs."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cpus": os.cpu_count(),
                    "browser": browser_version,
                    "cases": [
                        {
                            "name": c.name,
                            "path": str(c.path),
                            "search": c.search,
                            "reveal": c.reveal,
                            "reveal_late": c.reveal_late,
                            **c.figures,
                        }
                        for c in cases
                    ],
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
