"""The graph view: its data agrees with torch's own graph, it never needs torch or weight bytes,
and the page works in a real browser (headless Chromium driven by Playwright): it loads without
a console error, draws the module tree, opens a module, finds a node, and runs no script a
hostile archive puts in its names. Browser tests skip, saying why, without Chromium or
Playwright.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fixture_cases import case, torch_loads_or_skip
from helpers import program_member, record_member_reads, rewrite_zip, weight_members

from pt2interp.cli import main
from pt2interp.graphview import graph_data, html_document, write_html
from pt2interp.kinds import InputKind, OutputKind
from pt2interp.program import read_program

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
EVERY_ARCHIVE = sorted(FIXTURES.glob("*/*.pt2"))
CHROMIUM = "/usr/bin/chromium"

OP_KINDS = ("op", "hop")


def _ops(data, graph=None):
    return [n for n in data["nodes"] if n["k"] in OP_KINDS and (graph is None or n["g"] == graph)]


# ---- the data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EVERY_ARCHIVE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_archive_gives_consistent_data(path):
    program = read_program(path)
    data = graph_data(program)
    json.dumps(data, allow_nan=False)
    nodes = data["nodes"]
    # one op entry per node of every graph, subgraphs included, in the file's order
    assert [n["t"] for n in _ops(data)] == [n.target for n in program.model.graph.iter_nodes()]
    # every graph input and weight is a node, by kind
    specs = program.model.signature.input_specs
    main_inputs = [
        n for n in nodes if n["g"] == 0 and n["k"] not in OP_KINDS + ("output", "mutation")
    ]
    assert len(main_inputs) == len(specs)
    weights = [n["n"] for n in nodes if n["k"] in ("param", "buffer")]
    assert weights == [s.target for s in specs if s.kind in (InputKind.PARAMETER, InputKind.BUFFER)]
    outputs = [n for n in nodes if n["g"] == 0 and n["k"] in ("output", "mutation")]
    out_specs = [s for s in program.model.signature.output_specs if s.kind is not OutputKind.TOKEN]
    assert len(outputs) == len(out_specs)
    assert [n["k"] == "mutation" for n in outputs] == [s.kind.mutates for s in out_specs]
    # edges point at earlier nodes of the same graph; modules and graphs are valid indices
    for i, n in enumerate(nodes):
        for p in n["in"]:
            assert 0 <= p < i and nodes[p]["g"] == n["g"], (n["n"], p)
        assert -1 <= n["m"] < len(data["modules"])
        assert 0 <= n["g"] < len(data["graphs"])
        for g in n.get("sub", ()):
            assert data["graphs"][g]["owner"] == i
        if "st" in n:
            assert 0 <= n["st"] < len(data["traces"])


@pytest.mark.parametrize(
    "folder,name",
    [("zoo", "mini_gpt"), ("zoo", "tiny_resnet"), ("zoo", "cond"), ("zoo", "loops")],
)
def test_nodes_modules_and_edges_agree_with_torch(folder, name):
    pytest.importorskip("torch")
    path = case(folder, name).path
    ep = torch_loads_or_skip(path)
    data = graph_data(path)
    ours = [n for n in _ops(data, graph=0)]
    theirs = [
        n
        for n in ep.graph.nodes
        if n.op == "call_function" and "getitem" not in str(n.target)  # folded into outputs
    ]
    assert [n["t"].removeprefix("torch.ops.").removeprefix("higher_order.") for n in ours] == [
        str(n.target).removeprefix("torch.ops.") for n in theirs
    ]
    modules = data["modules"]
    # torch's name for each op node, as ours (an older torch reading a later release's archive
    # may rename a node: torch 2.10 names 2.13's split node split_tensor)
    ours_for = {node.name: mine.get("v", mine["n"]) for mine, node in zip(ours, theirs)}
    for mine, node in zip(ours, theirs, strict=True):
        stack = node.meta.get("nn_module_stack") or {}
        path_ = list(stack.values())[-1][0] if stack else ""
        want = re.sub(r"^L\['self'\]\.?|^L__self__", "", path_)
        want = re.sub(r"\[(\d+)\]", r".\1", want).strip(".")
        assert modules[mine["m"]]["path"] == want, (mine["n"], path_)
        # its edges: the values it reads, as torch names them (getitem nodes read through)
        producers = set()
        for arg in node.all_input_nodes:
            while arg.op == "call_function" and "getitem" in str(arg.target):
                arg = arg.args[0]
            if arg.op != "get_attr":  # a subgraph: drawn inside the op, not as a node
                producers.add(ours_for.get(arg.name, arg.name))
        mine_in = set()
        for p in mine["in"]:
            q = data["nodes"][p]
            mine_in.add(q.get("v", q["n"]))
        assert mine_in == producers, mine["n"]


def test_weights_show_shape_dtype_and_size():
    import pt2interp

    path = case("zoo", "mini_gpt").path
    schema = pt2interp.read_schema(path)
    data = graph_data(path)
    by_name = {n["n"]: n for n in data["nodes"] if n["k"] == "param"}
    for w in schema.parameters:
        shown = by_name[w.name]["w"]
        assert (shown["shape"], shown["dtype"], shown["bytes"]) == (
            w.tensor.shape_str,
            w.tensor.dtype,
            w.nbytes,
        )
        owner = data["modules"][by_name[w.name]["m"]]["path"]
        assert owner == w.name.rpartition(".")[0]


def test_dynamic_sizes_show_their_ranges():
    import pt2interp

    path = case("zoo", "dynamic_batch_mlp").path
    schema = pt2interp.read_schema(path)
    data = graph_data(path)
    (x,) = [n for n in data["nodes"] if n["k"] == "input"]
    assert x["out"][0][2] == schema.inputs[0].tensor.shape_str
    assert "∈" in x["out"][0][2]


def test_higher_order_subgraphs_are_their_own_graphs():
    data = graph_data(case("zoo", "loops").path)
    hops = {n["op"]: n for n in data["nodes"] if n["k"] == "hop"}
    assert set(hops) >= {"higher_order.while_loop", "higher_order.map_impl", "higher_order.scan"}
    loop = hops["higher_order.while_loop"]
    names = [data["graphs"][g]["name"] for g in loop["sub"]]
    assert names == ["while_loop_cond_graph_0", "while_loop_body_graph_0"]
    for g in loop["sub"]:
        members = [n for n in data["nodes"] if n["g"] == g]
        assert {"input", "op", "output"} <= {n["k"] for n in members}
        assert all(n["m"] == -1 for n in members)


def test_stack_traces_point_at_the_users_line():
    data = graph_data(case("zoo", "mini_gpt").path)
    emb = next(n for n in data["nodes"] if n.get("op") == "aten.embedding")
    trace = data["traces"][emb["st"]]
    file, line, function, code = trace["frames"][trace["src"]]
    assert file.endswith("zoo.py") and function == "forward" and "tok_emb" in code
    assert isinstance(line, int) and line > 0


def test_no_weight_bytes_are_read(monkeypatch):
    touched = record_member_reads(monkeypatch)
    for folder in ("zoo", "torch-2.5.1", "torch-2.11.0-cuda"):
        html_document(case(folder, "mini_gpt").path)
    weights = weight_members(touched)
    assert weights == [] and touched


def test_torch_is_never_imported(tmp_path):
    paths = [str(case(f, n).path) for f, n in [("zoo", "loops"), ("torch-2.5.1", "mini_gpt")]]
    code = (
        "import sys\n"
        "from pt2interp.cli import main\n"
        f"for i, p in enumerate({paths!r}):\n"
        f"    assert main(['graph', p, '-o', {str(tmp_path)!r} + f'/{{i}}.html']) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_cli_writes_the_page_and_names_bad_input(tmp_path, capsys, monkeypatch):
    out = tmp_path / "view.html"
    assert main(["graph", str(case("zoo", "mlp").path), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.read_text().startswith("<!DOCTYPE html>")
    monkeypatch.chdir(tmp_path)
    assert main(["graph", str(case("zoo", "cond").path)]) == 0
    assert (tmp_path / "cond.html").exists()
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    assert main(["graph", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.pt2" in err and "Traceback" not in err


def test_readme_picture_is_what_the_command_draws():
    from pt2interp.graphview import module_tree_svg

    committed = (FIXTURES.parent / "docs" / "mini_gpt-modules.svg").read_text(encoding="utf-8")
    assert committed == module_tree_svg(case("zoo", "mini_gpt").path), (
        "regenerate it: pt2interp graph fixtures/zoo/mini_gpt.pt2 -o docs/mini_gpt-modules.svg"
    )


def test_page_is_self_contained():
    page = html_document(case("zoo", "tiny_resnet").path)
    # nothing to fetch: no external script, style, font or image
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    csp = html.unescape(csp)
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp


# ---- hostile names ------------------------------------------------------------------------------

HOSTILE_MODULE = "<script>window.__pwned=1</script>"
HOSTILE_CLASS = 'x" onload="window.__pwned=2'
HOSTILE_TRACE = '<img src=x onerror="window.__pwned=3">'
HOSTILE_INPUT = "</script><script>window.__pwned=4</script>"


def _hostile_archive(tmp_path) -> Path:
    src = case("zoo", "mini_gpt").path
    member = program_member(src)
    with zipfile.ZipFile(src) as z:
        doc = json.loads(z.read(member))
    graph = doc["graph_module"]["graph"]
    for node in graph["nodes"]:
        meta = node.get("metadata", {})
        stack = meta.get("nn_module_stack", "")
        meta["nn_module_stack"] = stack.replace(
            ",tok_emb,torch.nn.modules.sparse.Embedding",
            f",{HOSTILE_MODULE},{HOSTILE_CLASS}",
        )
        if "stack_trace" in meta:
            meta["stack_trace"] = meta["stack_trace"].replace("forward", HOSTILE_TRACE)
    text = json.dumps(doc)
    assert HOSTILE_MODULE in text
    # the user input's name, everywhere it is used
    text = text.replace('"idx"', json.dumps(HOSTILE_INPUT))
    return rewrite_zip(src, tmp_path / "hostile.pt2", replace={member: text.encode()})


def test_hostile_names_stay_text_in_the_data(tmp_path):
    path = _hostile_archive(tmp_path)
    data = graph_data(path)
    assert HOSTILE_MODULE in [m["path"] for m in data["modules"]]
    page = html_document(path)
    data_text = page.split('id="graph-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data_text and ">" not in data_text  # cannot close its element
    assert json.loads(data_text) == json.loads(json.dumps(data))


# ---- in a browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class _Page:
    """A page with its console errors, uncaught exceptions and dialogs recorded."""

    def __init__(self, browser, url):
        self.page = browser.new_page(viewport={"width": 1280, "height": 860})
        self.problems: list[str] = []
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        self.page.on(
            "dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss())
        )
        self.page.goto(url)
        self.page.wait_for_function("document.documentElement.dataset.state !== 'loading'")

    @property
    def state(self):
        return self.page.evaluate("document.documentElement.dataset.state")

    def close(self):
        self.page.close()


def _open(browser, tmp_path, folder, name):
    out = write_html(case(folder, name).path, tmp_path / f"{folder}-{name}.html")
    return _Page(browser, out.as_uri())


def _painted_fraction(browser, png: bytes) -> float:
    """The share of pixels that differ from the top-left one, decoded by the browser itself."""
    page = browser.new_page()
    try:
        return page.evaluate(
            """async (b64) => {
              const img = new Image();
              img.src = "data:image/png;base64," + b64;
              await img.decode();
              const c = document.createElement("canvas");
              c.width = img.width;
              c.height = img.height;
              const g = c.getContext("2d");
              g.drawImage(img, 0, 0);
              const d = g.getImageData(0, 0, c.width, c.height).data;
              let n = 0;
              for (let i = 0; i < d.length; i += 4) {
                const diff = Math.abs(d[i] - d[0]) + Math.abs(d[i + 1] - d[1])
                  + Math.abs(d[i + 2] - d[2]);
                if (diff > 24) n++;
              }
              return n / (d.length / 4);
            }""",
            base64.b64encode(png).decode(),
        )
    finally:
        page.close()


@pytest.mark.parametrize(
    "folder,name",
    [
        ("zoo", "mini_gpt"),
        ("zoo", "loops"),
        ("zoo", "counter"),
        ("torch-2.3.1", "cond"),
        ("torch-2.5.1", "tiny_resnet"),
        ("torch-2.11.0-cuda", "mini_gpt"),
    ],
)
def test_page_loads_and_draws_the_module_tree(browser, tmp_path, folder, name):
    page = _open(browser, tmp_path, folder, name)
    try:
        assert page.state == "ready", page.page.text_content("#error")
        assert page.problems == []
        data = graph_data(case(folder, name).path)
        top = [m["path"] for m in data["modules"] if m["parent"] == 0]
        drawn = page.page.eval_on_selector_all(
            "g.container[data-path]", "els => els.map(e => e.getAttribute('data-path'))"
        )
        assert "" in drawn and set(top) <= set(drawn)
        assert page.page.locator("g.node").count() > 0
        shot = page.page.locator("#graph").screenshot()
        assert _painted_fraction(browser, shot) > 0.02
    finally:
        page.close()


def test_opening_a_module_shows_its_nodes(browser, tmp_path):
    page = _open(browser, tmp_path, "zoo", "mini_gpt")
    try:
        p = page.page
        closed = p.locator("g.container.collapsed[data-path]").first
        path = closed.get_attribute("data-path")
        data = graph_data(case("zoo", "mini_gpt").path)
        inside = {
            n["n"]
            for n in data["nodes"]
            if n["m"] >= 0 and (data["modules"][n["m"]]["path"] + ".").startswith(path + ".")
        }
        assert inside
        box = f'g.container[data-path="{path}"]'
        assert p.locator(f"{box} g.node").count() == 0
        before = _painted_fraction(browser, p.locator("#graph").screenshot())
        p.locator(f"{box} > .header").click()
        p.wait_for_selector(f"{box}.expanded")
        shown = set(
            p.eval_on_selector_all(
                f"{box} g[data-node]", "els => els.map(e => e.getAttribute('data-node'))"
            )
        )
        assert shown and shown <= inside | {n["n"] for n in data["nodes"]}
        assert shown & inside
        after = _painted_fraction(browser, p.locator("#graph").screenshot())
        assert before > 0.02 and after > 0.02
        p.locator(f"{box} > .header").click()
        p.wait_for_selector(f"{box}.collapsed")
        assert page.problems == []
    finally:
        page.close()


def test_search_finds_and_reveals_a_node(browser, tmp_path):
    page = _open(browser, tmp_path, "zoo", "mini_gpt")
    try:
        p = page.page
        data = graph_data(case("zoo", "mini_gpt").path)
        deep = [n for n in data["nodes"] if n.get("op") == "aten.gelu"]
        target = deep[-1]["n"]
        p.click("#collapse")
        assert p.locator(f'g.node[data-node="{target}"]').count() == 0  # inside a closed box
        p.fill("#search", "gelu")
        p.wait_for_selector("#search-results li")
        listed = p.eval_on_selector_all(
            "#search-results li", "els => els.map(e => e.getAttribute('data-node'))"
        )
        assert listed == [n["n"] for n in deep]
        p.locator(f'#search-results li[data-node="{target}"]').click()
        p.wait_for_selector(f'g.node.selected[data-node="{target}"]')
        assert p.text_content("#details h2") == target
        details = p.text_content("#details")
        assert "torch.ops.aten.gelu.default" in details and "zoo.py" in details
        assert page.problems == []
    finally:
        page.close()


def test_hostile_names_run_nothing(browser, tmp_path):
    out = write_html(_hostile_archive(tmp_path), tmp_path / "hostile.html")
    page = _Page(browser, out.as_uri())
    try:
        p = page.page
        assert page.state == "ready", p.text_content("#error")
        p.locator(f'g.container[data-path="{HOSTILE_MODULE}"] > .header').click()
        p.fill("#search", "embedding")
        p.wait_for_selector("#search-results li")
        p.locator("#search-results li").first.click()
        p.wait_for_selector("#details h2")
        assert HOSTILE_TRACE in p.text_content("#details")
        p.fill("#search", "pwned")
        p.wait_for_selector("#search-results li")
        assert p.evaluate("window.__pwned") is None
        assert page.problems == []
        # the names are on the page as text, not as elements or attributes
        texts = p.eval_on_selector_all("svg text, svg title", "els => els.map(e => e.textContent)")
        assert any(HOSTILE_MODULE in t for t in texts)
        assert any(HOSTILE_INPUT[:20] in t for t in texts)
        assert p.locator("svg script, svg img, #details img, #details script").count() == 0
        assert p.evaluate("document.querySelectorAll('[onload],[onerror]').length") == 0
    finally:
        page.close()


def test_status_page_links_each_model_to_its_graph(browser, tmp_path):
    pytest.importorskip("fastapi")
    import httpx
    from helpers import running

    from pt2interp.serve import Server
    from pt2interp.serve.http import create_app

    servers = {"gpt": Server(case("zoo", "mini_gpt").path, name="graph-gpt")}
    try:
        with running(create_app(servers)) as url:
            with httpx.Client(base_url=url, timeout=30) as client:
                reply = client.get("/v2/models/gpt/graph")
                assert reply.status_code == 200 and "text/html" in reply.headers["content-type"]
                assert client.get("/v2/models/nope/graph").status_code == 404
            page = _Page(browser, url + "/")
            try:
                link = page.page.locator('a[data-model="gpt"][data-field="graph"]')
                link.wait_for()
                link.click()
                page.page.wait_for_function("document.documentElement.dataset.state === 'ready'")
                assert page.page.url == url + "/v2/models/gpt/graph"
                assert page.page.locator('g.container[data-path="blocks"]').count() == 1
                assert page.problems == []
            finally:
                page.close()
    finally:
        for s in servers.values():
            s.shutdown(drain=False, timeout=2.0)


@pytest.mark.slow
def test_every_archive_opens_in_the_browser(browser, tmp_path):
    failures = []
    for path in EVERY_ARCHIVE:
        out = write_html(path, tmp_path / f"{path.parent.name}-{path.stem}.html")
        page = _Page(browser, out.as_uri())
        try:
            visible = page.page.evaluate("pt2graph.visibleCount()")
            if page.state != "ready" or page.problems or not visible:
                failures.append((str(path), page.state, page.problems))
        finally:
            page.close()
    assert failures == []


def test_the_address_keeps_the_selection(browser, tmp_path):
    out = write_html(case("zoo", "mini_gpt").path, tmp_path / "gpt.html")
    page = _Page(browser, out.as_uri() + "#node=gelu_1")
    try:
        p = page.page
        p.wait_for_selector('g.node.selected[data-node="gelu_1"]')
        assert p.text_content("#details h2") == "gelu_1"
        p.locator('g.node[data-node="gelu"]').dispatch_event("click")  # off screen
        assert p.evaluate("location.hash") == "#node=gelu"
        assert page.problems == []
    finally:
        page.close()
    page = _Page(browser, out.as_uri() + "#module=blocks.1.attn")
    try:
        p = page.page
        p.wait_for_selector('g.container.selected[data-path="blocks.1.attn"]')
        assert p.text_content("#details h2") == "blocks.1.attn"
        assert "CausalSelfAttention" in p.text_content("#details")
        assert page.problems == []
    finally:
        page.close()
    # a hash naming nothing, or not decodable, leaves the page as it opens
    for junk in ("#node=nope", "#module=%E0%A4%A", "#<script>"):
        page = _Page(browser, out.as_uri() + junk)
        try:
            assert page.state == "ready" and page.problems == []
        finally:
            page.close()
