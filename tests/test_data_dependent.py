"""Data-dependent sizes: unbacked symbols and the relations torch records about them.

``nonzero``, ``masked_select`` and ``.item()`` used as a size make export record unbacked
symbols (``u0``) and relations such as ``GreaterThan(Symbol('u0', integer=True), Integer(0))``
in ``graph.sym_bool_values``; ``torch._check`` becomes a runtime assert. Every entry point
reads such programs, runs them equal to torch, and a failed assert names its node.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import export_or_skip

import pt2interp
from pt2interp.symexpr import parse_expr


@pytest.mark.parametrize(
    "text, env, want, shown",
    [
        ("GreaterThan(Symbol('u0', integer=True), Integer(0))", {"u0": 3}, True, "u0 >= 0"),
        ("StrictGreaterThan(Symbol('u0', integer=True), Integer(3))", {"u0": 3}, False, "u0 > 3"),
        ("LessThan(Symbol('u0'), Integer(8))", {"u0": 9}, False, "u0 <= 8"),
        ("StrictLessThan(Symbol('u0'), Integer(8))", {"u0": 7}, True, "u0 < 8"),
        ("Eq(Mod(Symbol('s0'), Integer(2)), Integer(0))", {"s0": 4}, True, "s0 % 2 == 0"),
        ("Ne(Symbol('u0'), Integer(1))", {"u0": 1}, False, "u0 != 1"),
        (
            "And(Ge(Symbol('u0'), Integer(0)), Le(Symbol('u0'), Integer(10)))",
            {"u0": 11},
            False,
            "(u0 >= 0) and (u0 <= 10)",
        ),
        (
            "Or(Eq(Symbol('u0'), Integer(0)), Gt(Symbol('u0'), Integer(5)))",
            {"u0": 0},
            True,
            "(u0 == 0) or (u0 > 5)",
        ),
        ("Not(Eq(Symbol('u0'), Integer(1)))", {"u0": 2}, True, "not (u0 == 1)"),
        ("CeilToInt(IntTrueDiv(Symbol('s0'), Integer(2)))", {"s0": 5}, 3, "-(-s0 // 2)"),
        ("TruncToInt(IntTrueDiv(Symbol('s0'), Integer(2)))", {"s0": 5}, 2, "s0//2"),
        ("Abs(Add(Symbol('u0'), Integer(-5)))", {"u0": 2}, 3, "abs(u0 - 5)"),
        ("u0 >= 0", {"u0": 0}, True, "u0 >= 0"),
        ("(u0 >= 0) & (u0 <= 5)", {"u0": 6}, False, "(u0 >= 0) and (u0 <= 5)"),
        ("0 <= u0 <= 5", {"u0": 5}, True, "(0 <= u0) and (u0 <= 5)"),
        ("true", {}, 1, "1"),
    ],
)
def test_relations_parse_without_sympy_and_evaluate(text, env, want, shown):
    expr = parse_expr(text)
    assert expr.evaluate(env) == want and str(expr) == shown
    assert parse_expr(str(expr)).evaluate(env) == want  # the shown form reads back


class _NonZero(torch.nn.Module):
    def forward(self, x):
        idx = torch.nonzero(x > 0)
        return idx.float().sum(0), torch.masked_select(x, x > 0)


class _ItemAsSize(torch.nn.Module):
    def forward(self, x, n):
        k = n.item()
        torch._check(k > 0)
        torch._check(k <= 8)
        return x[:k] * 2


_MODELS = {
    "nonzero": (_NonZero, lambda: (torch.randn(6, generator=torch.Generator().manual_seed(0)),)),
    "item": (
        _ItemAsSize,
        lambda: (torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.tensor(5)),
    ),
}


@pytest.fixture(
    scope="module",
    params=[(m, ir) for m in _MODELS for ir in ("training", "core")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def archive(request, tmp_path_factory):
    name, ir = request.param
    make, inputs = _MODELS[name]
    ep = export_or_skip(make(), inputs())
    if ir == "core":
        ep = ep.run_decompositions()
    path = tmp_path_factory.mktemp("dd") / f"{name}_{ir}.pt2"
    torch.export.save(ep, path)
    return name, path, ep, inputs()


def test_every_entry_point_reads_unbacked_sizes(archive):
    _, path, _, _ = archive
    schema = pt2interp.read_schema(path)
    assert schema.inputs and pt2interp.read_program(path).graph.sym_bool_values
    pt2interp.extract_weights(path, backend="numpy")
    done = subprocess.run(
        [sys.executable, "-m", "pt2interp.cli", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_data_dependent_programs_run_equal_to_torch(archive):
    name, path, ep, args = archive
    with torch.no_grad():
        want = ep.module()(*args)
    got = pt2interp.load(path)(*args)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if name == "nonzero":  # other data, other sizes
        x = torch.tensor([1.0, -1.0, 2.0, 3.0, -4.0, 0.5])
        with torch.no_grad():
            torch.testing.assert_close(pt2interp.load(path)(x), ep.module()(x), rtol=0, atol=0)


def test_runtime_asserts_fail_naming_their_node(archive):
    name, path, _, args = archive
    if name != "item":
        pytest.skip("only the .item() model records asserts")
    prog = pt2interp.load(path)
    for n, expression in ((9, "u0 <= 8"), (0, "u0 >= 1")):
        with pytest.raises(pt2interp.ExecutionError, match=rf"_assert_scalar.*{expression}"):
            prog(args[0], torch.tensor(n))


def test_generated_source_runs_data_dependent_programs(archive):
    _, path, _, args = archive
    namespace: dict = {}
    exec(compile(pt2interp.to_python(path), "generated.py", "exec"), namespace)  # noqa: S102 (our own output)
    model = namespace["from_pt2"](path)
    torch.testing.assert_close(model(*args), pt2interp.load(path)(*args), rtol=0, atol=0)


def test_a_symbolic_value_nothing_can_read_is_reported_not_fatal(tmp_path):
    """Describing a program or taking its weights needs no symbolic relation: one pt2interp
    cannot read is listed by read_schema and info, and only running the program refuses it."""
    import json
    import zipfile

    from fixture_cases import case
    from helpers import member_named, rewrite_zip

    src = case("zoo", "dynamic_batch_mlp").path
    member = member_named(src, "models/model.json")
    with zipfile.ZipFile(src) as z:
        doc = json.loads(z.read(member))
    doc["graph_module"]["graph"]["sym_bool_values"] = {
        "odd": {"as_expr": {"expr_str": "Piecewise((Symbol('s77'), True))", "hint": None}}
    }
    path = rewrite_zip(src, tmp_path / "odd.pt2", replace={member: json.dumps(doc).encode()})

    schema = pt2interp.read_schema(path)
    assert list(schema.unreadable) == ["graph_module.graph.sym_bool_values.odd"]
    assert "Piecewise" in schema.unreadable["graph_module.graph.sym_bool_values.odd"]
    assert set(pt2interp.extract_weights(path)) == set(pt2interp.extract_weights(src))
    assert set(pt2interp.extract_weights(path, backend="numpy")) == set(
        pt2interp.extract_weights(src)
    )
    done = subprocess.run(
        [sys.executable, "-m", "pt2interp.cli", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (
        done.returncode == 0 and "not read" in done.stdout and "sym_bool_values.odd" in done.stdout
    ), done.stderr
    with pytest.raises(pt2interp.SchemaError, match=r"sym_bool_values\.odd.*Piecewise"):
        pt2interp.load(path)
