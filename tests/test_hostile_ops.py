"""Hostile graphs: ops that trust their arguments, text used as a format string, unbounded work.

Each crafted archive starts from a real one (the zoo's ``mlp``) with its graph replaced. Runs
that a regression would crash (memory corruption) happen in a child process, so a failure is
a failed test, not a dead test run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from fixture_cases import case
from helpers import member_named, program_member, rewrite_zip

import pt2interp
from pt2interp import limits
from pt2interp.ops import policy
from pt2interp.ops.registry import resolve_torch_op

MLP = case("zoo", "mlp").path
PROGRAM = member_named(MLP, "models/model.json")
REPO = Path(__file__).resolve().parent.parent
INT64 = 5  # ScalarType number


def _tensor(name: str) -> dict:
    return {"as_tensor": {"name": name}}


def _node(target: str, inputs: list[tuple[str, dict]], output: str | None) -> dict:
    return {
        "target": target,
        "inputs": [{"name": n, "arg": a, "kind": 1} for n, a in inputs],
        "outputs": [_tensor(output)] if output else [],
        "metadata": {},
    }


def _full(name: str, size: list[int], value, dtype: int | None = None) -> dict:
    args = [
        ("size", {"as_ints": size}),
        ("fill_value", {"as_int" if isinstance(value, int) else "as_float": value}),
    ]
    if dtype is not None:
        args.append(("dtype", {"as_scalar_type": dtype}))
    return _node("torch.ops.aten.full.default", args, name)


def craft(
    tmp_path: Path, nodes: list[dict], output: str, name: str = "crafted.pt2", src: Path = MLP
) -> Path:
    """The archive ``src`` with its graph's nodes replaced by ``nodes``, returning ``output``."""
    with zipfile.ZipFile(src) as z:
        doc = json.loads(z.read(PROGRAM))
    graph = doc["graph_module"]["graph"]
    graph["nodes"] = nodes
    graph["outputs"] = [_tensor(output)]
    doc["graph_module"]["signature"]["output_specs"] = [{"user_output": {"arg": _tensor(output)}}]
    graph["tensor_values"].setdefault(output, graph["tensor_values"]["linear_1"])
    return rewrite_zip(src, tmp_path / name, replace={PROGRAM: json.dumps(doc).encode()})


def run_isolated(
    path: Path,
    body: str = "print(type(pt2interp.load(path)(torch.randn(4, 16))).__name__)",
    timeout: int = 120,
) -> subprocess.CompletedProcess:
    """Load and call ``path`` in a child process (a crash there fails this test, not the run)."""
    code = textwrap.dedent(f"""
        import sys, torch, pt2interp
        path = sys.argv[1]
        try:
            {body}
        except pt2interp.Pt2Error as exc:
            print("Pt2Error", type(exc).__name__, str(exc).replace(chr(10), " "))
    """)
    return subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


def _assert_refused_cleanly(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 0, f"the child died (exit {done.returncode}): {done.stderr[-2000:]}"
    out = done.stdout.strip()
    assert out.startswith("Pt2Error"), out + done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in out, out
    return out


# -- 1. ops that trust their arguments -------------------------------------------------------------

_SPARSE = {
    "coo_unsafe": (
        "torch.ops.aten._sparse_coo_tensor_unsafe.default",
        lambda: [
            ("indices", _tensor("idx")),
            ("values", _tensor("vals")),
            ("size", {"as_ints": [3]}),
        ],
    ),
    "coo": (
        "torch.ops.aten.sparse_coo_tensor.indices_size",
        lambda: [
            ("indices", _tensor("idx")),
            ("values", _tensor("vals")),
            ("size", {"as_ints": [3]}),
        ],
    ),
    "coo_with_dims": (
        "torch.ops.aten._sparse_coo_tensor_with_dims_and_tensors.default",
        lambda: [
            ("sparse_dim", {"as_int": 1}),
            ("dense_dim", {"as_int": 0}),
            ("size", {"as_ints": [3]}),
            ("indices", _tensor("idx")),
            ("values", _tensor("vals")),
        ],
    ),
}


@pytest.mark.parametrize("index", [1 << 40, -(1 << 40)], ids=["huge", "negative"])
@pytest.mark.parametrize("kind", sorted(_SPARSE))
def test_sparse_tensors_from_unchecked_indices_are_refused(tmp_path, kind, index):
    target, inputs = _SPARSE[kind]
    path = craft(
        tmp_path,
        [
            _full("idx", [1, 1], index, INT64),
            _full("vals", [1], 1.0),
            _node(target, inputs(), "sp"),
            _node("torch.ops.aten._to_dense.default", [("self", _tensor("sp"))], "dense"),
        ],
        "dense",
    )
    out = _assert_refused_cleanly(
        run_isolated(path), "ExecutionError", "nodes[2]", target.split(".")[3]
    )
    assert re.search(r"size is inconsistent with indices|negative|out of", out), out


def test_sparse_index_views_are_copies(tmp_path):
    """Writing through ``_indices()`` must not corrupt the sparse tensor (it would index
    anywhere)."""
    path = craft(
        tmp_path,
        [
            _full("idx", [1, 1], 2, INT64),
            _full("vals", [1], 1.0),
            _node(
                "torch.ops.aten._sparse_coo_tensor_unsafe.default",
                [
                    ("indices", _tensor("idx")),
                    ("values", _tensor("vals")),
                    ("size", {"as_ints": [3]}),
                ],
                "sp",
            ),
            _node("torch.ops.aten._indices.default", [("self", _tensor("sp"))], "ind"),
            _node(
                "torch.ops.aten.fill_.Scalar",
                [("self", _tensor("ind")), ("value", {"as_int": 1 << 40})],
                "filled",
            ),
            _node("torch.ops.aten._to_dense.default", [("self", _tensor("sp"))], "dense"),
        ],
        "dense",
    )
    done = run_isolated(path, "print(pt2interp.load(path)(torch.randn(4, 16)).tolist())")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[0.0, 0.0, 1.0]"


@pytest.mark.parametrize("target", [1 << 40, -5], ids=["huge", "negative"])
def test_ctc_targets_out_of_range_are_refused(tmp_path, target):
    path = craft(
        tmp_path,
        [
            _full("lp", [50, 1, 3], -1.0),
            _full("targets", [1, 20], target, INT64),
            _node(
                "torch.ops.aten._ctc_loss.default",
                [
                    ("log_probs", _tensor("lp")),
                    ("targets", _tensor("targets")),
                    ("input_lengths", {"as_ints": [50]}),
                    ("target_lengths", {"as_ints": [20]}),
                ],
                "loss",
            ),
        ],
        "loss",
    )
    # _ctc_loss has two outputs
    doc_fix = json.loads(zipfile.ZipFile(path).read(PROGRAM))
    doc_fix["graph_module"]["graph"]["nodes"][2]["outputs"] = [
        {"as_tensors": [{"name": "loss"}, {"name": "alpha"}]}
    ]
    path = rewrite_zip(path, tmp_path / "ctc.pt2", replace={PROGRAM: json.dumps(doc_fix).encode()})
    _assert_refused_cleanly(
        run_isolated(path), "ExecutionError", "_ctc_loss", "CTC targets must lie in [0, 3)"
    )


@pytest.mark.parametrize(
    "target, inputs, fragment",
    [
        (
            "torch.ops.aten.set_.source_Tensor",
            [("self", _tensor("x")), ("source", _tensor("x"))],
            "unchecked",
        ),
        (
            "torch.ops.aten._copy_from.default",
            [("self", _tensor("x")), ("dst", _tensor("x"))],
            "skips its checks",
        ),
        ("torch.ops.aten.format.default", [("self", {"as_string": "{}"})], "formats archive text"),
        (
            "torch.ops.aten.ljust.default",
            [("self", {"as_string": "a"}), ("width", {"as_int": 1 << 40})],
            "returns a string",
        ),
        (
            "torch.ops.aten._coalesced_.default",
            [("self", _tensor("x")), ("coalesced", {"as_bool": True})],
            "coalesced",
        ),
        (
            "torch.ops.higher_order.inline_asm_elementwise",
            [("", _tensor("x"))],
            "not a higher-order op",
        ),
        (
            "torch.ops.profiler._record_function_enter.default",
            [("name", {"as_string": "x"})],
            "profiler",
        ),
    ],
)
def test_refused_ops_fail_at_load_naming_node_and_reason(tmp_path, target, inputs, fragment):
    path = craft(tmp_path, [_node(target, inputs, "y")], "y")
    with pytest.raises(pt2interp.UnsupportedOpError) as info:
        pt2interp.load(path)
    assert "nodes[0]" in str(info.value) and fragment in str(info.value), info.value


# -- the policy covers every op that matches the dangerous patterns --------------------------------

_DANGEROUS = re.compile(r"unsafe|_print|print|from_file|_copy_from|set_")
_RAW_ARGUMENT = re.compile(r"^(filename|file|path|ptr|data_ptr|pointer|addr)$")


def _all_op_schemas():
    for schema in torch._C._jit_get_all_schemas():
        yield schema.name, schema
    for name in torch._C._dispatch_get_all_op_names():
        yield name.split(".")[0], None


def test_every_dangerous_op_in_torch_is_refused_or_wrapped():
    uncovered = set()
    for qualified, schema in _all_op_schemas():
        namespace, _, name = qualified.partition("::")
        raw = schema is not None and any(
            _RAW_ARGUMENT.match(a.name) or "Storage" in str(a.type) for a in schema.arguments
        )
        if not (_DANGEROUS.search(name) or raw):
            continue
        if namespace in policy.REFUSED_NAMESPACES or policy.rule_for(namespace, name) is not None:
            continue
        uncovered.add(qualified)
    assert not uncovered, f"ops the policy says nothing about: {sorted(uncovered)}"


def test_only_listed_higher_order_ops_resolve():
    for name in getattr(torch._ops, "_higher_order_ops", {}):
        target = f"torch.ops.higher_order.{name}"
        if name in policy.HIGHER_ORDER_ALLOWED:
            continue
        with pytest.raises(
            pt2interp.UnsupportedOpError, match="not a higher-order op pt2interp runs"
        ):
            resolve_torch_op(target)


@pytest.mark.parametrize(
    "call",
    [
        lambda a, x: a._unsafe_index.Tensor(x, [torch.tensor([1 << 20])]),
        lambda a, x: a._unsafe_index_put.default(
            x.clone(), [torch.tensor([1 << 20])], torch.tensor([1.0]), True
        ),
        lambda a, x: a._unsafe_view.default(x, [1 << 20]),
        lambda a, x: a.as_strided.default(x, [1 << 20], [1]),
        lambda a, x: a.as_strided.default(x, [2], [1], 1 << 20),
        lambda a, x: a.as_strided_scatter.default(x, torch.randn(1 << 10), [1 << 10], [1]),
    ],
    ids=[
        "_unsafe_index",
        "_unsafe_index_put",
        "_unsafe_view",
        "as_strided",
        "as_strided_offset",
        "as_strided_scatter",
    ],
)
def test_what_the_policy_allows_checks_its_own_bounds(call):
    """The claims behind the 'allow' verdicts: out-of-range arguments raise in torch itself."""
    with pytest.raises((IndexError, RuntimeError)):
        call(torch.ops.aten, torch.randn(3))


def test_masked_unsafe_index_clamps():
    x = torch.arange(3.0)
    got = torch.ops.aten._unsafe_masked_index.default(
        x, torch.tensor([False, True]), [torch.tensor([1 << 20, 1])], -1.0
    )
    assert got.tolist() == [-1.0, 1.0]


# -- 2. archive text is never a format string, and is printed printable ----------------------------


def _print_archive(tmp_path: Path, template: str) -> Path:
    if not hasattr(torch._higher_order_ops, "print"):
        pytest.skip(f"torch {torch.__version__} has no print higher-order op")

    class Printing(torch.nn.Module):
        def forward(self, x):
            torch._higher_order_ops.print(
                "PLACEHOLDER {}", x=x.sum()
            )  # keywords: every release takes them
            return x + 1

    src = tmp_path / "print.pt2"
    try:
        torch.export.save(torch.export.export(Printing(), (torch.randn(4, 16),)), src)
    except Exception as exc:  # noqa: BLE001 (export raises many kinds)
        pytest.skip(
            f"torch {torch.__version__} cannot export print: {type(exc).__name__}: {str(exc)[:100]}"
        )
    member = program_member(src)
    with zipfile.ZipFile(src) as z:
        text = z.read(member).decode().replace("PLACEHOLDER {}", json.dumps(template)[1:-1])
    return rewrite_zip(src, tmp_path / "hostile_print.pt2", replace={member: text.encode()})


def test_print_never_formats_archive_text(tmp_path, monkeypatch):
    monkeypatch.setenv("PT2INTERP_SECRET_FOR_TEST", "hunter2")
    template = (
        "{0.__class__.__init__.__globals__[sys].modules[os].environ[PT2INTERP_SECRET_FOR_TEST]}"
        " {:1500000000}"
    )
    path = _print_archive(tmp_path, template)
    done = run_isolated(path, "pt2interp.load(path)(torch.randn(4, 16)); print('ran')")
    assert done.returncode == 0 and done.stdout.strip().endswith("ran"), done.stderr[-2000:]
    assert "hunter2" not in done.stdout and "__globals__" in done.stdout


def test_printed_text_is_made_printable(tmp_path):
    path = _print_archive(tmp_path, "\x1b]0;pwned\x07\x1b[2J clear \u202e evil")
    done = run_isolated(path, "pt2interp.load(path)(torch.randn(4, 16))")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\x1b" not in done.stdout and "\u202e" not in done.stdout and "\x07" not in done.stdout
    assert "\\x1b[2J" in done.stdout and "\\u202e" in done.stdout


def test_aten_print_is_made_printable(tmp_path):
    path = craft(
        tmp_path,
        [
            _node(
                "torch.ops.aten._print.default", [("s", {"as_string": "\x1b[31mred\x1b[0m"})], None
            ),
            _node("torch.ops.aten.relu.default", [("self", _tensor("x"))], "y"),
        ],
        "y",
    )
    done = run_isolated(path, "pt2interp.load(path)(torch.randn(4, 16))")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\x1b" not in done.stdout and "\\x1b[31mred" in done.stdout


def test_string_formatting_by_percent_is_refused(tmp_path):
    path = craft(
        tmp_path,
        [
            _node(
                "_operator.mod", [("a", {"as_string": "%1500000000d"}), ("b", {"as_int": 1})], "s"
            ),
            _node("torch.ops.aten.relu.default", [("self", _tensor("x"))], "y"),
        ],
        "y",
    )
    _assert_refused_cleanly(run_isolated(path), "never used as a format string")


# -- 5. bounded work -------------------------------------------------------------------------------


class _Forever(torch.nn.Module):
    def forward(self, x):
        from torch._higher_order_ops.while_loop import while_loop

        return while_loop(lambda i, y: i < 10, lambda i, y: (i + 1, y + 1), (torch.tensor(0), x))


def _loop_archives(tmp_path: Path) -> tuple[Path, Path]:
    """(a while_loop of ten iterations, the same with a condition that never turns false)"""
    src = tmp_path / "loop.pt2"
    try:
        ep = torch.export.export(_Forever(), (torch.randn(4, 16),))
    except Exception as exc:  # noqa: BLE001 (older torch cannot export while_loop)
        pytest.skip(f"torch {torch.__version__} cannot export while_loop: {type(exc).__name__}")
    torch.export.save(ep, src)
    member = program_member(src)
    with zipfile.ZipFile(src) as z:
        doc = json.loads(z.read(member))
    # the condition subgraph compares with 10: make it compare with something it never reaches
    text = json.dumps(doc).replace('"as_int": 10}', '"as_int": 9223372036854775807}')
    assert text != json.dumps(doc)
    return src, rewrite_zip(src, tmp_path / "forever.pt2", replace={member: text.encode()})


def test_a_loop_that_never_ends_stops_at_the_budget(tmp_path):
    ten, forever = _loop_archives(tmp_path)
    prog = pt2interp.load(forever)
    with (
        limits.override(max_loop_iterations=50),
        pytest.raises(
            pt2interp.LimitError, match=r"nodes\[\d+\].*while_loop ran 50 iterations"
        ) as info,
    ):
        prog(torch.randn(4, 16))
    assert info.value.limit == "max_loop_iterations" and "limits.override" in str(info.value)
    with limits.override(max_loop_iterations=50):  # a loop within the budget runs
        i, y = pt2interp.load(ten)(torch.zeros(4, 16))
    assert int(i) == 10 and torch.equal(y, torch.full((4, 16), 10.0))


@pytest.mark.parametrize(
    "op, a, b",
    [
        ("_operator.add", {"as_string": "ab"}, {"as_string": "cd"}),
        ("_operator.mul", {"as_string": "ab"}, {"as_int": 1 << 40}),
        ("_operator.mul", {"as_ints": [1, 2]}, {"as_int": 1 << 30}),
    ],
)
def test_python_values_are_bounded(tmp_path, op, a, b):
    # doubling a string forty times, or repeating a list, stops at the value budget
    nodes = [_node(op, [("a", a), ("b", b)], "s0")]
    if op == "_operator.add":
        for i in range(1, 41):
            nodes.append(
                _node(
                    "_operator.add",
                    [("a", _tensor(f"s{i - 1}")), ("b", _tensor(f"s{i - 1}"))],
                    f"s{i}",
                )
            )
    nodes.append(_node("torch.ops.aten.relu.default", [("self", _tensor("x"))], "y"))
    # as_tensor references stand for any value here: the interpreter reads slots by name
    path = craft(tmp_path, nodes, "y")
    out = _assert_refused_cleanly(run_isolated(path), "LimitError", "max_python_value_bytes")
    assert "nodes[" in out


def test_many_python_values_share_a_per_call_budget(tmp_path):
    nodes = [
        _node("_operator.mul", [("a", {"as_string": "x"}), ("b", {"as_int": 1 << 20})], f"s{i}")
        for i in range(40)
    ]
    nodes.append(_node("torch.ops.aten.relu.default", [("self", _tensor("x"))], "y"))
    path = craft(tmp_path, nodes, "y")
    prog = pt2interp.load(path)
    with (
        limits.override(max_python_bytes_per_call=8 << 20),
        pytest.raises(pt2interp.LimitError, match="max_python_bytes_per_call"),
    ):
        prog(torch.randn(4, 16))
    prog(torch.randn(4, 16))  # within the default budget; each call starts afresh
    prog(torch.randn(4, 16))


def test_graph_size_is_bounded_before_nodes_are_built(tmp_path):
    relu = _node("torch.ops.aten.relu.default", [("self", _tensor("x"))], "y")
    path = craft(tmp_path, [relu] * 1000, "y")
    with limits.override(max_graph_nodes=999):
        for entry in (pt2interp.read_program, pt2interp.read_schema, pt2interp.load):
            with pytest.raises(pt2interp.LimitError, match="more than 999 nodes"):
                entry(path)
    with (
        limits.override(max_program_bytes=1000),
        pytest.raises(pt2interp.LimitError, match="max_program_bytes"),
    ):
        pt2interp.read_program(path)


def test_limits_are_validated_and_scoped():
    with (
        pytest.raises(ValueError, match="max_loop_iterations"),
        limits.override(max_loop_iterations=-1),
    ):
        pass
    before = limits.current()
    with limits.override(max_graph_nodes=7):
        assert limits.current().max_graph_nodes == 7
    assert limits.current() == before


# -- every entry point on every crafted archive ----------------------------------------------------


def _crafted_archives(tmp_path: Path) -> dict[str, Path]:
    out = {
        "sparse": craft(
            tmp_path,
            [
                _full("idx", [1, 1], 1 << 40, INT64),
                _full("vals", [1], 1.0),
                _node(
                    "torch.ops.aten._sparse_coo_tensor_unsafe.default",
                    _SPARSE["coo_unsafe"][1](),
                    "sp",
                ),
                _node("torch.ops.aten._to_dense.default", [("self", _tensor("sp"))], "y"),
            ],
            "y",
            name="sparse.pt2",
        ),
        "refused": craft(
            tmp_path,
            [
                _node(
                    "torch.ops.aten.set_.source_Tensor",
                    [("self", _tensor("x")), ("source", _tensor("x"))],
                    "y",
                )
            ],
            "y",
            name="refused.pt2",
        ),
        "aten_print": craft(
            tmp_path,
            [
                _node("torch.ops.aten._print.default", [("s", {"as_string": "\x1b[2J{0}"})], None),
                _node("torch.ops.aten.relu.default", [("self", _tensor("x"))], "y"),
            ],
            "y",
            name="print.pt2",
        ),
        "percent": craft(
            tmp_path,
            [
                _node(
                    "_operator.mod",
                    [("a", {"as_string": "%1500000000d"}), ("b", {"as_int": 1})],
                    "s",
                ),
                _node("torch.ops.aten.relu.default", [("self", _tensor("x"))], "y"),
            ],
            "y",
            name="percent.pt2",
        ),
    }
    return out


_ENTRY_POINTS = textwrap.dedent("""
    import sys, torch, pt2interp
    entry = sys.argv[1]
    for path in sys.argv[2:]:
        try:
            if entry == "read_schema":
                pt2interp.read_schema(path)
            elif entry == "state_dict":
                pt2interp.read_program(path).state_dict()
            elif entry == "extract_numpy":
                pt2interp.extract_weights(path, backend="numpy")
            elif entry == "load_and_call":
                pt2interp.load(path)(torch.randn(4, 16))
            elif entry == "to_python":
                compile(pt2interp.to_python(path), "generated.py", "exec")
            print("OUTCOME ok")
        except pt2interp.Pt2Error as exc:
            print("OUTCOME Pt2Error", type(exc).__name__)
""")


@pytest.mark.parametrize(
    "entry", ["read_schema", "state_dict", "extract_numpy", "load_and_call", "to_python", "info"]
)
def test_every_entry_point_survives_every_crafted_graph(tmp_path, entry):
    archives = _crafted_archives(tmp_path)
    if entry == "info":
        for name, path in archives.items():
            done = subprocess.run(
                [sys.executable, "-m", "pt2interp.cli", "info", str(path)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                cwd=REPO,
            )
            assert done.returncode in (0, 1) and "Traceback" not in done.stderr, (
                name,
                done.stderr[-2000:],
            )
            assert "\x1b" not in done.stdout + done.stderr, name
        return
    done = subprocess.run(
        [sys.executable, "-c", _ENTRY_POINTS, entry, *map(str, archives.values())],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [
        line.removeprefix("OUTCOME ")
        for line in done.stdout.splitlines()
        if line.startswith("OUTCOME ")
    ]
    outcomes = dict(zip(archives, lines))
    assert len(lines) == len(archives), done.stdout
    allowed = {
        "ok",
        "Pt2Error ExecutionError",
        "Pt2Error UnsupportedOpError",
        "Pt2Error LimitError",
    }
    assert set(outcomes.values()) <= allowed, outcomes
