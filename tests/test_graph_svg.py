"""The module tree as a static picture (pt2interp.graphview.tree_svg): what the SVG shows
agrees with read_schema, the limits bound it, archive text stays inert, torch is never imported,
and Chromium turns it into a PNG of the same size."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
from fixture_cases import case
from helpers import member_named, record_member_reads, rewrite_zip, weight_members

import pt2interp
from pt2interp.graphview import tree_svg
from pt2interp.graphview.tree_svg import MAX_ROWS, RenderError, module_tree_svg, svg_to_png

SVG = "{http://www.w3.org/2000/svg}"
MLP = case("zoo", "mlp")
needs_browser = pytest.mark.skipif(
    not any(shutil.which(b) for b in tree_svg._BROWSERS),
    reason="no Chromium on PATH to rasterize with",
)

FIXTURES = [
    ("zoo", "mini_gpt"),
    ("zoo", "tiny_resnet"),
    ("zoo", "cond"),
    ("zoo", "loops"),
    ("zoo", "multi_io"),
    ("zoo", "dynamic_batch_mlp"),
    ("torch-2.5.1", "tiny_resnet"),
    ("torch-2.3.1", "mini_gpt"),
    ("torch-2.11.0-cuda", "mini_gpt"),
]


# -- reading the picture ------------------------------------------------------------------------


def _parse(svg: str) -> ET.Element:
    picture = ET.fromstring(svg)
    assert picture.tag == SVG + "svg"
    width, height = int(picture.get("width")), int(picture.get("height"))
    assert picture.get("viewBox") == f"0 0 {width} {height}"
    return picture


def _rows(svg: str) -> list[tuple[str, list[str]]]:
    """(kind, texts) of each row: ``row`` for a module, ``same``, ``more``, ``left_out``."""
    rows = []
    for g in _parse(svg).iter(SVG + "g"):
        classes = g.get("class", "").split()
        if "row" in classes:
            kind = classes[1] if len(classes) > 1 else "row"
            rows.append((kind, [t.text for t in g.iter(SVG + "text")]))
    return rows


def _texts(svg: str) -> list[str]:
    return [t.text for t in _parse(svg).iter(SVG + "text")]


# -- crafting archives --------------------------------------------------------------------------


def _program(src: Path) -> tuple[str, dict]:
    member = member_named(src, "models/model.json")
    with zipfile.ZipFile(src) as z:
        return member, json.loads(z.read(member))


def _with_modules(tmp_path: Path, modules: list[tuple[str, str]], name="modules.pt2") -> Path:
    """The zoo MLP with one more relu node run inside each ``(path, class)`` module (its
    ancestors as the frames above it, of class ``Container``)."""
    member, doc = _program(MLP.path)
    nodes = doc["graph_module"]["graph"]["nodes"]
    relu = next(n for n in nodes if "relu" in n["target"])
    added = []
    for path, type_name in modules:
        frames = ["L__self__,,fixtures.zoo.MLP"]
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            kind = type_name if i == len(parts) else "fixtures.zoo.Container"
            frames.append(f"L__self__{prefix.replace('.', '_')},{prefix},{kind}")
        node = copy.deepcopy(relu)
        node["metadata"]["nn_module_stack"] = ";".join(frames)
        added.append(node)
    nodes[2:2] = added
    return rewrite_zip(MLP.path, tmp_path / name, replace={member: json.dumps(doc).encode()})


def _renamed(tmp_path: Path, renames: dict[str, str], torch_version: str) -> Path:
    """The zoo MLP with each old text replaced by the new one in every JSON member (module
    paths, weight names, class names), and its program's torch version replaced."""
    replace = {}
    with zipfile.ZipFile(MLP.path) as z:
        for n in z.namelist():
            if n.endswith(".json"):
                text = z.read(n).decode()
                for old, new in renames.items():
                    text = text.replace(old, json.dumps(new)[1:-1])
                if n.endswith("models/model.json"):
                    doc = json.loads(text)
                    doc["torch_version"] = torch_version
                    text = json.dumps(doc)
                replace[n] = text.encode()
    return rewrite_zip(MLP.path, tmp_path / "hostile.pt2", replace=replace)


# ----------------------------------------------------------------------------------------------
# What the picture says
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder,name", FIXTURES, ids=[f"{f}/{n}" for f, n in FIXTURES])
def test_picture_agrees_with_read_schema(folder, name):
    path = case(folder, name).path
    schema = pt2interp.read_schema(path)
    svg = module_tree_svg(path)
    texts = _texts(svg)
    rows = _rows(svg)
    assert texts[0] == path.name
    assert f"{schema.totals.parameter_count:,} parameters" in texts[1]
    version = schema.torch_version  # torch 2.3 did not record it
    assert (f"torch {version}" if version else "torch version not recorded") in texts[1]
    assert "schema " + ".".join(map(str, schema.schema_version)) in texts[1]
    for value in schema.inputs + schema.outputs:
        shown = f"{value.name} {value.tensor.dtype}{value.tensor.shape_str}"
        assert any(shown in t for t in texts[2:5]), (shown, texts[:5])
    # the root row: the file, its class, every parameter under a name and every node
    kind, root = rows[0]
    assert root[:2] == [path.name, schema.module_tree.class_name]
    graph = pt2interp.read_program(path, outline=True).model.graph
    assert root[3] == f"{sum(1 for _ in graph.iter_nodes()):,}"
    # each top-level module has a row of its own, or is one of a run of alike ones
    names = [texts[0] for kind, texts in rows if kind == "row"]
    runs = " ".join(texts[0] for kind, texts in rows if kind == "same")
    for child in schema.module_tree.children:
        assert child.name in names or child.fqn in runs, child.fqn


def test_symbolic_dims_show_their_ranges():
    svg = module_tree_svg(case("zoo", "dynamic_batch_mlp").path)
    assert "x float32[s77∈1..1024, 16] → out float32[s77∈1..1024, 8]" in _texts(svg)


def test_tied_weights_are_counted_once_in_the_header():
    schema = pt2interp.read_schema(case("zoo", "mini_gpt").path)
    assert schema.totals.tied  # the tree counts head.weight under both names; the totals once
    line = _texts(module_tree_svg(case("zoo", "mini_gpt").path))[1]
    assert f"{schema.totals.parameter_count:,} parameters" in line
    assert "1 tied weight counted once" in line


def test_byte_total_in_the_header():
    path = case("zoo", "tiny_resnet").path
    total = pt2interp.read_schema(path).totals.total_bytes
    shown = re.search(r"· ([\d.,]+) (B|KiB|MiB|GiB)\b", _texts(module_tree_svg(path))[1])
    number, unit = shown.groups()
    shown = float(number.replace(",", "")) * 1024 ** ["B", "KiB", "MiB", "GiB"].index(unit)
    assert abs(shown - total) <= 0.05 * 1024 ** ["B", "KiB", "MiB", "GiB"].index(unit)


def test_a_second_block_built_like_the_first_is_one_row():
    path = case("zoo", "mini_gpt").path
    tree = pt2interp.read_schema(path).module_tree
    blocks = next(c for c in tree.children if c.name == "blocks")
    assert [b.class_name for b in blocks.children] == ["GPTBlock", "GPTBlock"]
    rows = _rows(module_tree_svg(path))
    same = [texts for kind, texts in rows if kind == "same"]
    assert same == [["blocks.1 GPTBlock, same as blocks.0", "12.7K", "19"]]
    # blocks.0 is drawn in full, blocks.1's submodules not at all
    assert [texts[0] for kind, texts in rows if kind == "row"].count("ln1") == 1
    assert len(rows) == sum(1 for _ in tree.walk()) - (len(list(blocks.children[1].walk())) - 1)


def test_alike_is_same_classes_and_parameter_counts_all_the_way_down():
    rows = _rows(module_tree_svg(case("zoo", "tiny_resnet").path))
    same = [texts[0] for kind, texts in rows if kind == "same"]
    # layer1's two blocks match; layer2..4 have a first block with a downsample, or other sizes
    assert same == ["layer1.1 BasicBlock, same as layer1.0"]


def test_a_run_of_alike_siblings(tmp_path):
    modules = [(f"blocks.{i}.act", "torch.nn.modules.activation.ReLU") for i in range(12)]
    path = _with_modules(tmp_path, modules + [("blocks.12.act", "torch.nn.modules.GELU")])
    rows = _rows(module_tree_svg(path))
    labels = [texts[0] for _, texts in rows]
    assert "blocks.1 – blocks.11: 11 × Container, same as blocks.0" in labels
    assert labels.count("act") == 2  # blocks.0's and blocks.12's
    # a run of leaves: one row saves nothing for one follower, and saves rows for more
    leaves = [(f"m{i}", "torch.nn.modules.activation.Sigmoid") for i in range(2)] + [
        (f"n{i}", "torch.nn.modules.activation.Tanh") for i in range(4)
    ]
    rows = _rows(module_tree_svg(_with_modules(tmp_path, leaves, "leaves.pt2")))
    labels = [texts[0] for _, texts in rows]
    assert {"m0", "m1", "n0"} <= set(labels) and "n1" not in labels
    assert "n1 – n3: 3 × Tanh, same as n0" in labels


# ----------------------------------------------------------------------------------------------
# Limits
# ----------------------------------------------------------------------------------------------


def test_depth_limits_the_levels_drawn():
    path = case("zoo", "mini_gpt").path
    tree = pt2interp.read_schema(path).module_tree
    modules = sum(1 for _ in tree.walk())
    rows = _rows(module_tree_svg(path, depth=0))
    assert len(rows) == 1 and rows[0][1][2] == f"+{modules - 1} submodules"
    rows = _rows(module_tree_svg(path, depth=1))
    assert [texts[0] for _, texts in rows[1:]] == [c.name for c in tree.children]
    blocks = next(c for c in tree.children if c.name == "blocks")
    hidden = sum(1 for _ in blocks.walk()) - 1
    # (a ModuleList runs no code of its own: the stack has no class for it)
    assert ["blocks", f"+{hidden} submodules"] == next(t[:2] for _, t in rows if t[0] == "blocks")
    counts = [len(_rows(module_tree_svg(path, depth=d))) for d in (0, 1, 2, 3, 4, None)]
    assert counts == sorted(counts) and counts[0] < counts[2] < counts[-1], counts
    assert counts[-2] == counts[-1]  # mini_gpt is four levels deep


def test_max_children_caps_the_siblings_drawn():
    path = case("zoo", "tiny_resnet").path
    tree = pt2interp.read_schema(path).module_tree
    assert len(tree.children) == 10
    rows = _rows(module_tree_svg(path, depth=1, max_children=3))
    assert [texts[0] for _, texts in rows[1:]] == [
        *(c.name for c in tree.children[:3]),
        "… and 7 more",
    ]
    assert rows[-1][0] == "more"
    # the last row sums what it stands for
    assert rows[-1][1][1] == tree_svg._human_count(
        sum(c.parameter_count for c in tree.children[3:])
    )
    assert len(_rows(module_tree_svg(path, depth=1, max_children=10))) == 11


def test_arguments_are_checked():
    path = case("zoo", "mlp").path
    with pytest.raises(ValueError, match="depth"):
        module_tree_svg(path, depth=-1)
    with pytest.raises(ValueError, match="max_children"):
        module_tree_svg(path, max_children=0)


def test_rows_are_bounded_however_many_modules(tmp_path):
    count = MAX_ROWS + 500
    modules = [(f"m{i}", f"torch.nn.modules.activation.ReLU{i}") for i in range(count)]
    path = _with_modules(tmp_path, modules)
    total = sum(1 for _ in pt2interp.read_schema(path).module_tree.walk())
    svg = module_tree_svg(path, max_children=10 * count)
    rows = _rows(svg)
    assert len(rows) == MAX_ROWS + 1
    assert rows[-1] == ("left_out", [f"… {total - MAX_ROWS:,} more modules not drawn"])
    assert int(_parse(svg).get("height")) < 25 * (MAX_ROWS + 10)
    assert len(svg) < 500 * (MAX_ROWS + 10)
    # with the default cap, the root's children stop at 24
    rows = _rows(module_tree_svg(path))
    assert rows[-1][1][0] == f"… and {count + 3 - 24} more"


# ----------------------------------------------------------------------------------------------
# Archive text is inert
# ----------------------------------------------------------------------------------------------

SCRIPT = "<script>alert(1)</script>"
ONLOAD = 'x" onload="alert(1)'
LONG = "layer_" * 60
CLASS = "evil.<img src=x onerror=alert(1)>\x1b[2J\u202egnp\ufffe"


def test_hostile_names_come_out_as_inert_text(tmp_path):
    path = _renamed(
        tmp_path,
        {
            "fc1": SCRIPT,
            "fc2": ONLOAD,
            "relu": LONG,
            "torch.nn.modules.activation.ReLU": CLASS,
        },
        torch_version="<b>2.0</b>\x07",
    )
    svg = module_tree_svg(path)
    picture = _parse(svg)  # well-formed
    for element in picture.iter():
        tag = element.tag.removeprefix(SVG)
        assert tag in {"svg", "style", "rect", "line", "path", "text", "title", "g"}, tag
        assert not [a for a in element.attrib if a.lower().startswith("on")], element.attrib
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202e\ufffe]", svg)
    texts = _texts(svg)
    labels = [texts[0] for kind, texts in _rows(svg)]
    assert SCRIPT in labels and ONLOAD in labels
    assert "torch <b>2.0</b>\\x07" in texts[1]
    tips = [t.text for t in picture.iter(SVG + "title")]
    assert "<img src=x onerror=alert(1)>\\x1b[2J\\u202egnp\\ufffe" in tips
    # the long name is cut, and whole in a tooltip
    long_row = next(t for t in picture.iter(SVG + "text") if t.text.startswith("layer_layer_"))
    assert long_row.text.endswith("…") and len(long_row.text) <= 40
    assert long_row.find(SVG + "title").text == LONG


def test_the_picture_reads_the_program_and_no_weights(monkeypatch):
    touched = record_member_reads(monkeypatch)
    for folder, name in (("zoo", "mini_gpt"), ("torch-2.5.1", "tiny_resnet")):
        module_tree_svg(case(folder, name).path)
    weights = weight_members(touched)
    assert touched and weights == []


def test_torch_is_never_imported():
    paths = [str(case(f, n).path) for f, n in (("zoo", "mini_gpt"), ("torch-2.5.1", "cond"))]
    code = (
        "import sys\n"
        "from pt2interp.graphview.tree_svg import module_tree_svg\n"
        f"for p in {paths!r}:\n"
        "    assert module_tree_svg(p, depth=2).startswith('<?xml')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------
# PNG
# ----------------------------------------------------------------------------------------------


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@needs_browser
def test_png_is_the_picture(tmp_path):
    svg = module_tree_svg(case("zoo", "mini_gpt").path)
    width, height = int(_parse(svg).get("width")), int(_parse(svg).get("height"))
    png = svg_to_png(svg, tmp_path / "tree.png")
    assert png == tmp_path / "tree.png"
    data = png.read_bytes()
    assert _png_size(data) == (width, height)
    # not blank: a white page of the same size compresses to a fraction of it
    blank_svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"/>'
    blank = svg_to_png(blank_svg, tmp_path / "blank.png").read_bytes()
    assert _png_size(blank) == (width, height)
    assert len(data) > 4 * len(blank), (len(data), len(blank))
    other = svg_to_png(module_tree_svg(case("zoo", "mlp").path), tmp_path / "mlp.png")
    assert other.read_bytes() != data
    sharp = svg_to_png(svg, tmp_path / "sharp.png", scale=2).read_bytes()
    assert _png_size(sharp) == (2 * width, 2 * height)


def test_png_without_a_browser_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    svg = module_tree_svg(case("zoo", "mlp").path)
    with pytest.raises(RenderError, match="needs a headless Chromium.*--format svg"):
        svg_to_png(svg, tmp_path / "tree.png")
    with pytest.raises(pt2interp.Pt2Error, match="'no-such-browser' is not on PATH"):
        svg_to_png(svg, tmp_path / "tree.png", browser="no-such-browser")
    assert not (tmp_path / "tree.png").exists()


def _fake_browser(tmp_path: Path, script: str) -> str:
    """An executable that runs the Python ``script`` in place of a browser."""
    path = tmp_path / "fake-browser"
    path.write_text(f"#!{sys.executable}\nimport subprocess, sys, time\n{script}\n")
    path.chmod(0o755)
    return str(path)


def _ends(pid: int, within_s: float = 5.0) -> bool:
    """Whether the process is gone (or a zombie, no longer running) within a few seconds."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(os.name != "posix", reason="the fake browsers are scripts with a #! line")
def test_png_failures_are_clear_and_leave_the_output_alone(tmp_path, monkeypatch):
    svg = module_tree_svg(case("zoo", "mlp").path)
    out = tmp_path / "tree.png"
    out.write_bytes(b"earlier")
    quiet = _fake_browser(tmp_path, "sys.exit(0)")
    with pytest.raises(RenderError, match="wrote no PNG"):
        svg_to_png(svg, out, browser=quiet)
    failing = _fake_browser(tmp_path, "print('cannot open display', file=sys.stderr)\nsys.exit(3)")
    with pytest.raises(RenderError, match="exit status 3.*cannot open display"):
        svg_to_png(svg, out, browser=failing)
    monkeypatch.setattr(tree_svg, "_BROWSER_TIMEOUT_S", 1)
    # with a helper process of its own, as Chromium has: it is stopped with the browser
    helper_pid = tmp_path / "helper.pid"
    hanging = _fake_browser(
        tmp_path,
        "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        f"open({str(helper_pid)!r}, 'w').write(str(helper.pid))\n"
        "time.sleep(30)",
    )
    started = time.monotonic()
    with pytest.raises(RenderError, match="took over 1 s"):
        svg_to_png(svg, out, browser=hanging)
    assert time.monotonic() - started < 10
    assert _ends(int(helper_pid.read_text()))
    assert out.read_bytes() == b"earlier"
    with pytest.raises(ValueError, match="width and height"):
        svg_to_png("<svg/>", out, browser=quiet)
    with pytest.raises(ValueError, match="scale"):
        svg_to_png(svg, out, browser=quiet, scale=0)
