"""Issue: archive text that reaches a terminal or generated code, and exceptions of the wrong type.

Names, versions, expressions and numbers in a ``.pt2`` are file content. Each test crafts a
hostile archive and runs it through every entry point (:func:`_every_entry_point`):
``read_schema``, ``read_program().state_dict()``, ``extract_weights(backend="numpy")``,
``load`` and a call, ``to_python`` and ``compile()``, and the ``info`` / ``info --json``
command line. Each either succeeds, showing the text escaped, or raises a ``Pt2Error``; the
command line either prints escaped text or exactly one error line and exits 1.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from fixture_cases import case
from helpers import member_named, rewrite_zip

import pt2interp
from pt2interp import cli
from pt2interp.codegen.names import comment
from pt2interp.codegen.printer import constant_text

MLP = case("zoo", "mlp")
DYNAMIC = case("zoo", "dynamic_batch_mlp")

# What must never reach a terminal raw: C0 and C1 controls, DEL, bidi controls, line and
# paragraph separators, lone surrogates.
_RAW_UNSAFE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
    "\u2066-\u2069\ud800-\udfff]"
)

HOSTILE_TEXT = {
    "markup": "[bold red]x[/]",
    "unbalanced markup": "a[/]b[/bold]",
    "escape sequence": "a\x1b[2J\x1b[31mred",
    "terminal title": "t\x1b]0;pwned\x07",
    "C1 control": "c\x9b31m\x85",
    "bidi override": "gnp\u202eexe.\u2066x",
    "lone surrogate": "s\ud800",
}


# -- crafting -------------------------------------------------------------------------------------


def _members(src: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(src) as z:
        return {i.filename: z.read(i.filename) for i in z.infolist()}


def _program(src: Path) -> tuple[str, dict]:
    member = member_named(src, "models/model.json")
    return member, json.loads(_members(src)[member])


def _edit(
    tmp_path: Path, edit, src: Path = MLP.path, *, text=None, name: str = "hostile.pt2"
) -> Path:
    """The archive with its program JSON edited (``edit(doc)``), then its text (``text(s)``)."""
    member, doc = _program(src)
    edit(doc)
    data = json.dumps(doc)
    if text is not None:
        data = text(data)
    return rewrite_zip(src, tmp_path / name, replace={member: data.encode()})


def _rename_everywhere(tmp_path: Path, old: str, new: str, src: Path = MLP.path) -> Path:
    """``old`` replaced by ``new`` in every JSON member (module paths, weight names, configs)."""
    escaped = json.dumps(new)[1:-1]
    replace = {
        n: d.decode().replace(old, escaped).encode()
        for n, d in _members(src).items()
        if n.endswith(".json")
    }
    return rewrite_zip(
        src, tmp_path / f"renamed_{len(list(tmp_path.iterdir()))}.pt2", replace=replace
    )


def _nodes(doc) -> list:
    return doc["graph_module"]["graph"]["nodes"]


def _tensor_values(doc) -> dict:
    return doc["graph_module"]["graph"]["tensor_values"]


# -- running --------------------------------------------------------------------------------------


def _main(*argv: str) -> tuple[int, str, str]:
    """``pt2interp`` in this process, writing UTF-8 (strictly, as a terminal would) to pipes."""
    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", errors="strict", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", errors="strict", write_through=True)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = cli.main(list(argv))
    return rc, out.getvalue().decode("utf-8"), err.getvalue().decode("utf-8")


def _cli_ok(*argv: str) -> tuple[int, str, str]:
    """The command line: escaped text and status 0, or one escaped error line and status 1."""
    rc, out, err = _main(*argv)
    assert rc in (0, 1), (rc, err)
    for stream in (out, err):
        raw = _RAW_UNSAFE.findall(stream.replace("\n", ""))
        assert not raw, f"raw {raw!r} reached the terminal: {stream[:500]!r}"
    if rc == 1:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("pt2interp: error: "), err
        assert not out
    elif "--json" in argv:
        json.loads(out)
    return rc, out, err


def _every_entry_point(path: Path, inputs=None) -> dict[str, str]:
    """``{entry point: "ok" or the Pt2Error's class name}``; anything else fails the test."""
    args, kwargs = inputs if inputs is not None else MLP.inputs()
    outcomes = {}

    def generated():
        source = pt2interp.to_python(path)
        assert source.isascii(), "generated source holds non-ASCII text"
        compile(source, "generated.py", "exec")

    for name, fn in (
        ("read_schema", lambda: pt2interp.read_schema(path)),
        ("state_dict", lambda: pt2interp.read_program(path).state_dict()),
        ("extract_weights", lambda: pt2interp.extract_weights(path, backend="numpy")),
        ("load", lambda: pt2interp.load(path)(*args, **kwargs)),
        ("to_python", generated),
        ("info", lambda: _cli_ok("info", str(path))[0]),
        ("info --json", lambda: _cli_ok("info", "--json", str(path))[0]),
    ):
        try:
            result = fn()
            outcomes[name] = "error line" if name.startswith("info") and result == 1 else "ok"
        except pt2interp.Pt2Error as exc:
            outcomes[name] = type(exc).__name__
    return outcomes


@contextlib.contextmanager
def _stack_budget(frames: int):
    """Python's recursion limit set ``frames`` above the caller's depth for the block."""
    depth, f = 0, sys._getframe()
    while f is not None:
        depth, f = depth + 1, f.f_back
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + frames)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


# ------------------------------------------------------------------------------------------------
# pt2interp info: archive text shown, never interpreted
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(HOSTILE_TEXT))
def test_info_shows_hostile_names_escaped(tmp_path, kind):
    """The text as a module and weight name, a torch version, an IR name and an op target."""
    text = HOSTILE_TEXT[kind]
    path = _rename_everywhere(tmp_path, "fc1", text)
    path = _edit(
        tmp_path,
        lambda d: (
            d.update(torch_version=text, verifiers=[text]),
            _nodes(d)[1].update(target=f"torch.ops.aten.{text}"),
        ),
        src=path,
    )
    rc, out, _ = _cli_ok("info", str(path))
    assert rc == 0
    shown = cli.shown(text)
    for expected in (f"written by torch {shown}", f"IR {shown}", f"aten.{shown}"):
        assert expected in out, f"{expected!r} not in:\n{out}"
    assert out.count(shown) >= 5, out  # and the module in the weights table and the module tree
    if kind.endswith("markup"):
        assert text in out  # printed as the characters it is
    rc, out, _ = _cli_ok("info", "--json", str(path))
    doc = json.loads(out)
    assert doc["torch_version"] == doc["dialect"] == text  # the very text, in JSON escapes
    assert f"{text}.weight" in [p["name"] for p in doc["parameters"]]
    outcomes = _every_entry_point(path)
    assert outcomes["read_schema"] == outcomes["extract_weights"] == "ok", outcomes
    assert outcomes["load"] == outcomes["to_python"] == "UnsupportedOpError", outcomes  # no such op


def test_info_in_a_real_process_with_markup_controls_and_surrogates(tmp_path):
    """The command as a user runs it: stdout is a pipe whose encoder refuses lone surrogates."""
    path = _rename_everywhere(tmp_path, "fc1", "[bold]\x1b[2J\ud800[/]")
    for argv in (["info", str(path)], ["info", "--json", str(path)]):
        r = subprocess.run(
            [sys.executable, "-m", "pt2interp.cli", *argv],
            capture_output=True,
            timeout=120,
            check=False,
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        )
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        out = r.stdout.decode("utf-8")  # strict: no surrogate made it out as bytes
        assert "\x1b" not in out and "Traceback" not in r.stderr.decode()
    assert json.loads(out)["parameters"][0]["name"] == "[bold]\x1b[2J\ud800[/].weight"


def test_info_json_escapes_what_json_dumps_leaves_raw():
    document = json.dumps({"name": "a\x1b\x7f\x9b\u202e\ud800\U000e0041∈é"}, ensure_ascii=False)
    safe = cli.json_printable(document)
    assert json.loads(safe) == json.loads(document)
    assert not _RAW_UNSAFE.search(safe) and "∈é" in safe


@pytest.mark.parametrize("command", ["info", "run", "codegen"])
def test_error_lines_escape_the_archive_text_they_quote(tmp_path, command):
    """Messages quoting a hostile argument kind or node name: one line, controls escaped,
    markup shown as it is."""
    evil = "x\x1b]0;pwned\x07\n[/]\u202e"
    if command == "info":  # an unknown argument kind, quoted as it is
        path = _edit(
            tmp_path,
            lambda d: d["graph_module"]["graph"]["inputs"].__setitem__(0, {f"as_{evil}": 1}),
        )
        argv = ["info", str(path)]
    elif command == "run":  # a kernel failure, naming its node
        path = _edit(
            tmp_path,
            lambda d: (
                _nodes(d)[2].update(name=evil),
                _nodes(d)[2]["inputs"][1]["arg"]["as_tensor"].update(name="p_fc1_weight"),
            ),
        )
        argv = ["run", str(path), "--random"]
    else:  # a node lacking an argument its op reads
        path = _edit(
            tmp_path, lambda d: _nodes(d)[1].update(name=evil, target="torch.ops.aten.add.Tensor")
        )
        argv = ["codegen", str(path)]
    rc, _, err = _cli_ok(*argv)
    assert rc == 1
    assert "\\x1b]0;pwned\\x07" in err and "[/]" in err and "\\u202e" in err, err


# ------------------------------------------------------------------------------------------------
# Numbers: inf, nan, and integers beyond what str() prints (4300 digits) or a float holds
# ------------------------------------------------------------------------------------------------

_HUGE_INT = "9" * 4200  # within json's own 4300-digit limit; far beyond a float or an int64


def _arg(value):
    return lambda d: _nodes(d)[1].update(
        target="torch.ops.aten.add.Scalar",
        inputs=[
            {"name": "self", "arg": {"as_tensor": {"name": "linear"}}, "kind": 1},
            {"name": "other", "arg": value, "kind": 1},
        ],
    )


@pytest.mark.parametrize(
    "edit",
    [
        _arg({"as_float": _HUGE_INT}),
        _arg({"as_floats": [1.0, _HUGE_INT]}),
        _arg({"as_complex": {"real": 1.0, "imag": _HUGE_INT}}),
    ],
    ids=["float", "floats", "complex"],
)
def test_integers_too_large_for_a_float(tmp_path, edit):
    """A float argument written as a 4,200-digit integer: float() raises OverflowError."""
    path = _edit(tmp_path, edit, text=lambda s: s.replace(f'"{_HUGE_INT}"', _HUGE_INT))
    outcomes = _every_entry_point(path)
    assert (
        outcomes["read_schema"] == "ok"
        and outcomes["state_dict"] == outcomes["load"] == "SchemaError"
    ), outcomes


def test_inf_and_nan_wherever_a_number_goes(tmp_path):
    """JSON's 1e400 is inf: as float, complex and list arguments, range bounds, size hints and
    constant inputs. A guard: each of these already reads or fails as a Pt2Error."""

    def edit(d):
        _arg({"as_complex": {"real": "@inf@", "imag": "@nan@"}})(d)
        _nodes(d)[2]["inputs"].append({"name": "alpha", "arg": {"as_float": "@-inf@"}, "kind": 2})
        d["range_constraints"] = {"s0": {"min_val": "@-inf@", "max_val": "@inf@"}}
        _tensor_values(d)["x"]["sizes"][0] = {
            "as_expr": {"expr_str": "s0", "hint": {"as_float": "@inf@"}}
        }
        d["graph_module"]["signature"]["input_specs"].append(
            {"constant_input": {"name": "k", "value": {"as_floats": ["@nan@", "@inf@"]}}}
        )

    path = _edit(
        tmp_path,
        edit,
        text=lambda s: (
            s.replace('"@inf@"', "1e400").replace('"@-inf@"', "-1e400").replace('"@nan@"', "NaN")
        ),
    )
    outcomes = _every_entry_point(path)
    assert outcomes["read_schema"] == outcomes["to_python"] == outcomes["info --json"] == "ok", (
        outcomes
    )


def test_a_huge_integer_as_a_float_names_its_path(tmp_path):
    path = _edit(tmp_path, _arg({"as_float": "@@"}), text=lambda s: s.replace('"@@"', _HUGE_INT))
    with pytest.raises(
        pt2interp.SchemaError,
        match=r"nodes\[1\]\.inputs\[1\]\.arg\.as_float.*does not fit in a float",
    ):
        pt2interp.read_program(path)


@pytest.mark.parametrize(
    "expr",
    [
        "Integer(0x" + "f" * 5000 + ")",  # hex: ast.parse takes it, str() would not
        "Mul(Integer(" + "9" * 5000 + "), s77)",  # decimal: refused by Python's parser
        "Mul(" + ", ".join(["s77"] * 1500) + ")",  # 1024**1500: 15,000 bits at the range's top
    ],
    ids=["hex literal", "decimal literal", "product"],
)
def test_huge_integers_in_symbolic_sizes(tmp_path, expr):
    def edit(d):
        _tensor_values(d)["x"]["sizes"][0] = {"as_expr": {"expr_str": expr, "hint": {"as_int": 4}}}

    path = _edit(tmp_path, edit, src=DYNAMIC.path)
    outcomes = _every_entry_point(path, DYNAMIC.inputs())
    assert outcomes["info"] == outcomes["info --json"], outcomes
    if outcomes["read_schema"] == "ok":
        dim = pt2interp.read_schema(path).inputs[0].tensor.shape[0]
        assert (dim.min, dim.max) == (None, None)  # too large a range to evaluate: shown unbounded
    else:
        with pytest.raises(pt2interp.SchemaError, match=r"tensor_values\.x\.sizes\[0\]"):
            pt2interp.read_schema(path)


def test_symbolic_literals_are_bounded():
    from pt2interp.symexpr import EvaluationError, parse_expr

    with pytest.raises(pt2interp.SchemaError, match="integer of 20000 bits"):
        parse_expr("0x" + "f" * 5000, member="m.json", path="p")
    e = parse_expr("Mul(" + ", ".join(["s0"] * 100) + ")")
    with pytest.raises(EvaluationError, match="too large to evaluate"):
        e.evaluate({"s0": 2**62})
    assert parse_expr("Mul(Integer(-9223372036854775808), s0)").evaluate({"s0": 2}) == -(2**64)


@pytest.mark.parametrize("where", ["input", "parameter"])
def test_element_counts_beyond_int64(tmp_path, where):
    """300 sizes of 2**62 multiply to an int str() cannot print: refused by name, not counted."""
    sizes = [{"as_int": 2**62}] * 300
    name = "x" if where == "input" else "p_fc1_weight"
    path = _edit(
        tmp_path,
        lambda d: _tensor_values(d)[name].update(sizes=sizes, strides=[{"as_int": 1}] * 300),
    )
    if where == "parameter":
        config = member_named(path, "model_weights_config.json")
        cfg = json.loads(zipfile.ZipFile(path).read(config))
        cfg["config"]["fc1.weight"]["tensor_meta"].update(
            sizes=sizes, strides=[{"as_int": 1}] * 300
        )
        path = rewrite_zip(path, tmp_path / "cfg.pt2", replace={config: json.dumps(cfg).encode()})
    with pytest.raises(
        pt2interp.SchemaError,
        match=f"tensor '{'x' if where == 'input' else 'fc1.weight'}'.*2\\*\\*63-1",
    ):
        pt2interp.read_schema(path)
    outcomes = _every_entry_point(path)
    assert outcomes["info"] == outcomes["info --json"] == "error line", outcomes


# ------------------------------------------------------------------------------------------------
# Codegen: constants that evaluate back to themselves, bounded comments, Pt2Errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        complex(math.inf, math.nan),
        complex(-math.inf, -0.0),
        complex(-0.0, 1.0),
        complex(1.0, -0.0),
        -2j,
        complex(math.nan, math.inf),
        -(10**5000),
    ],
    ids=lambda v: f"int of {v.bit_length()} bits" if isinstance(v, int) else repr(v),
)
def test_constants_evaluate_to_the_same_value(value):
    from pt2interp.codegen.printer import format_statement

    source = format_statement(f"y = f({constant_text(value)})")
    namespace = {"math": math, "f": lambda v: v}
    exec(compile(source, "generated.py", "exec"), namespace)  # noqa: S102 (our own output, under test)
    got = namespace["y"]
    assert type(got) is type(value)
    if isinstance(value, int):
        assert got == value
    else:
        parts = (value.real, value.imag) if isinstance(value, complex) else (value,)
        got_parts = (got.real, got.imag) if isinstance(got, complex) else (got,)
        for a, b in zip(got_parts, parts):
            assert (math.isnan(a) and math.isnan(b)) or (
                a == b and math.copysign(1, a) == math.copysign(1, b)
            )


def test_generated_module_computes_with_an_inf_nan_complex_constant(tmp_path):
    def edit(d):
        _nodes(d)[2].update(
            target="torch.ops.aten.mul.Scalar",
            inputs=[
                {"name": "self", "arg": {"as_tensor": {"name": "relu"}}, "kind": 1},
                {
                    "name": "other",
                    "arg": {"as_complex": {"real": "@@", "imag": "@nan@"}},
                    "kind": 1,
                },
            ],
        )

    path = _edit(
        tmp_path, edit, text=lambda s: s.replace('"@@"', "1e400").replace('"@nan@"', "NaN")
    )
    source = pt2interp.to_python(path)
    namespace: dict = {}
    exec(compile(source, "generated.py", "exec"), namespace)  # noqa: S102 (our own output, under test)
    x = MLP.inputs()[0][0]
    got = namespace["from_pt2"](path)(x)
    want = pt2interp.load(path)(x)
    assert got.dtype == want.dtype == torch.complex64
    assert torch.equal(torch.view_as_real(got).isnan(), torch.view_as_real(want).isnan())
    assert torch.equal(torch.view_as_real(got).nan_to_num(), torch.view_as_real(want).nan_to_num())


def test_comments_cut_before_they_are_sanitized():
    huge = "x = f(a)  " + "\u202e" * 20_000_000
    t0 = time.perf_counter()
    text = comment(huge)
    assert time.perf_counter() - t0 < 0.5, "comment() walked the whole string"
    assert (
        text.startswith("x = f(a) ?")
        and text.endswith("...")
        and len(text) <= 100
        and text.isascii()
    )


def test_codegen_refuses_a_node_without_the_arguments_its_op_reads(tmp_path):
    path = _edit(
        tmp_path,
        lambda d: _nodes(d)[1].update(
            target="torch.ops.aten.add.Tensor",
            inputs=[
                {"name": "self", "arg": {"as_tensor": {"name": "linear"}}, "kind": 1},
                {"name": "zz", "arg": {"as_tensor": {"name": "linear"}}, "kind": 1},
            ],
        ),
    )
    with pytest.raises(pt2interp.GraphError, match="node relu .*lacks argument 'other'"):
        pt2interp.to_python(path)


def test_codegen_refuses_a_parameter_without_a_static_shape(tmp_path):
    def edit(d):
        d["graph_module"]["signature"]["input_specs"][0]["parameter"]["arg"]["name"] = "nowhere"

    with pytest.raises(pt2interp.GraphError, match="parameter 'fc1.weight' has no static shape"):
        pt2interp.to_python(_edit(tmp_path, edit))


@pytest.mark.parametrize("index", ["\u00b2", "9" * 5000], ids=["superscript two", "5000 digits"])
def test_module_names_that_only_look_like_indices(tmp_path, index):
    """``str.isdigit`` passes "²" (``int`` refuses it) and 5,000 digits (``int`` refuses to
    print them): such children of a Sequential are attributes, not list positions."""
    src = case("zoo", "vgg_style").path
    path = _rename_everywhere(tmp_path, "classifier.0", f"classifier.{index}", src=src)
    path = _rename_everywhere(tmp_path, "classifier_0", f"classifier_{index}", src=path)
    source = pt2interp.to_python(path)
    compile(source, "generated.py", "exec")
    assert "getattr(" in source


def test_namedtuple_outputs_whose_names_python_cannot_compile(tmp_path):
    """Field names equal under NFKC (``a``, ``ａ``) and a keyword type name: namedtuple would
    raise SyntaxError / ValueError; the result keeps its structure under positional names."""
    leaf = {"type": None, "context": None, "children_spec": []}
    spec = [1, {"type": "collections.namedtuple", "context": "mod.class", "children_spec": [leaf]}]

    def edit(d):
        d["graph_module"]["module_call_graph"][0]["signature"]["out_spec"] = json.dumps(spec)
        d["graph_module"]["treespec_namedtuple_fields"] = {"mod.class": {"field_names": ["\uff41"]}}

    path = _edit(tmp_path, edit)
    x = MLP.inputs()[0][0]
    out = pt2interp.load(path)(x)
    assert type(out).__name__ == "Result" and out._fields == ("_0",)
    assert _every_entry_point(path) == dict.fromkeys(
        (
            "read_schema",
            "state_dict",
            "extract_weights",
            "load",
            "to_python",
            "info",
            "info --json",
        ),
        "ok",
    )


# ------------------------------------------------------------------------------------------------
# Depth: nothing below the JSON nesting limit recurses much deeper than parsing it did
# ------------------------------------------------------------------------------------------------


def _nested(depth: int):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def _out_spec(depth: int) -> str:
    spec = {"type": None, "context": None, "children_spec": []}
    for _ in range(depth):
        spec = {"type": "builtins.tuple", "context": "null", "children_spec": [spec]}
    return json.dumps([1, spec])


def _module_stack(depth: int) -> str:
    frames, path = ["L__self__,,fixtures.zoo.MLP"], []
    for _ in range(depth):
        path.append("m")
        frames.append(
            f"L__self__{'.'.join(path)},{'.'.join(path)},torch.nn.modules.activation.ReLU"
        )
    return ";".join(frames)


def _deep_archives(tmp_path: Path, what: str) -> list[tuple[Path, str]]:
    """(archive, what it must give) at a depth the readers take and, but for the constant
    (which the JSON nesting limit bounds), one past their bound."""

    def constant(d, depth):
        d["graph_module"]["signature"]["input_specs"].append(
            {"constant_input": {"name": "k", "value": {"as_int": _nested(depth)}}}
        )

    def out_spec(d, depth):
        d["graph_module"]["module_call_graph"][0]["signature"]["out_spec"] = _out_spec(depth)

    def module_path(d, depth):
        _nodes(d)[1]["metadata"]["nn_module_stack"] = _module_stack(depth)

    edit, cases = {
        "constant": (constant, [(390, "ok")]),
        "output tree spec": (out_spec, [(64, "ok"), (150, "SchemaError")]),
        "module path": (module_path, [(64, "ok"), (300, "GraphError")]),
    }[what]
    return [
        (_edit(tmp_path, functools.partial(edit, depth=depth), name=f"deep{depth}.pt2"), outcome)
        for depth, outcome in cases
    ]


@pytest.mark.parametrize("what", ["constant", "output tree spec", "module path"])
def test_deep_structures_stay_within_the_stack(tmp_path, what):
    """json.loads itself needs about one frame per level (some 400 for the deepest document
    read): every entry point must do with 500 frames more than its caller, and what nests past
    a reader's own bound (tree specs, module paths: 64) is refused by name."""
    for path, want in _deep_archives(tmp_path, what):
        with _stack_budget(500):
            outcomes = _every_entry_point(path)
        if want == "SchemaError":  # every reader parses the spec
            assert set(outcomes.values()) == {"SchemaError", "error line"}, outcomes
        elif want == "GraphError":  # only codegen builds classes for the module tree
            assert outcomes["to_python"] == "GraphError" and outcomes["read_schema"] == "ok", (
                outcomes
            )
        else:
            assert (
                outcomes["read_schema"] == outcomes["to_python"] == outcomes["info --json"] == "ok"
            ), outcomes
