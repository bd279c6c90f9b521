"""One call signature for load, the server and info: the same names everywhere, and binding
that round-trips (positional, by name, keyword, nested, dict inputs), checked against torch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fixture_cases import release

import pt2interp
from pt2interp.errors import InputMismatchError, Pt2Error
from pt2interp.serve.batching import BatchLayout
from pt2interp.signature import CallSignature, input_leaf_names, output_leaf_names

# archives before torch 2.6 record no forward parameter names: placeholder names stand in
NAMES_RECORDED = release(torch.__version__) >= (2, 6)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ARCHIVES = sorted(
    p
    for p in FIXTURES.glob("*/*.pt2")
    if p.parent.name == "zoo" or p.parent.name.startswith("torch-")
)


@pytest.mark.parametrize("path", ARCHIVES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_server_names_equal_info_names(path):
    try:
        program = pt2interp.read_program(path)
        CallSignature.from_model(program.model, strict=True)  # a program that can run
    except Pt2Error as exc:
        pytest.skip(f"not servable: {exc}")
    layout = BatchLayout.from_program(program.model)
    schema = pt2interp.read_schema(path)
    assert [s.name for s in layout.inputs] == [v.name for v in schema.inputs]
    assert [s.name for s in layout.outputs] == [v.name for v in schema.outputs]
    assert [(v.name, v.keyword) for v in schema.inputs] == input_leaf_names(program.model)
    assert [v.name for v in schema.outputs] == output_leaf_names(program.model)
    # what the HTTP metadata lists is those names, for the values a client sends
    described = layout.describe()
    sent = [v.name for v in schema.inputs if v.kind != "constant"]
    assert [e["name"] for e in described["inputs"]] == [
        n for n in sent if next(s for s in layout.inputs if s.name == n).kind in ("tensor", "int")
    ]
    assert [e["name"] for e in described["outputs"]] == [v.name for v in schema.outputs]


def _export(module: torch.nn.Module, args: tuple, kwargs: dict, tmp_path: Path) -> Path:
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(module, args, kwargs), path)
    return path


class _Nested(torch.nn.Module):
    def forward(self, x, xs, opts, *, scale):
        return {"sum": x + xs[0] * xs[1], "pair": (opts["shift"] - x, scale * x)}


def _nested_call():
    x, a, b, shift = (torch.randn(3, 4) for _ in range(4))
    return (x, [a, b], {"shift": shift}), {"scale": torch.randn(4)}


def _same(got, want) -> None:
    assert type(got) is type(want) or isinstance(got, dict) and isinstance(want, dict)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            _same(got[k], want[k])
    elif isinstance(want, (tuple, list)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
    else:
        assert torch.equal(got, want)


def test_nested_and_dict_inputs_bind_unbind_and_run_as_torch_does(tmp_path):
    args, kwargs = _nested_call()
    path = _export(_Nested(), args, kwargs, tmp_path)
    prog = pt2interp.load(path)
    sig = prog.signature
    assert [kw for _, kw in sig.input_names] == [False, False, False, False, True]
    if NAMES_RECORDED:
        assert [n for n, _ in sig.input_names] == ["x", "xs.0", "xs.1", "opts.shift", "scale"]
    assert sig.output_names == ["out.sum", "out.pair.0", "out.pair.1"]
    want = torch.export.load(path).module()(*args, **kwargs)

    leaves = sig.bind(args, kwargs)
    flat = [args[0], *args[1], args[2]["shift"], kwargs["scale"]]
    assert all(g is w for g, w in zip(leaves, flat)) and len(leaves) == len(flat)
    again_args, again_kwargs = sig.unbind(leaves)
    assert all(g is w for g, w in zip(sig.bind(again_args, again_kwargs), leaves))
    _same(again_args, tuple(args))
    _same(again_kwargs, kwargs)

    _same(prog(*args, **kwargs), want)
    out = prog.run_leaves(leaves)
    assert len(out) == 3
    _same(sig.build_output(out), want)
    assert all(g is w for g, w in zip(sig.output_leaves(sig.build_output(out)), out))
    # positional inputs passed by name, and a call by input names
    if NAMES_RECORDED:
        _same(prog(x=args[0], xs=args[1], opts=args[2], **kwargs), want)
    named = dict(zip([n for n, _ in sig.input_names], leaves))
    _same(prog(*prog.bind_named(named)[0], **prog.bind_named(named)[1]), want)


def test_binding_errors_name_the_problem(tmp_path):
    args, kwargs = _nested_call()
    sig = pt2interp.load(_export(_Nested(), args, kwargs, tmp_path)).signature
    names = [n for n, _ in sig.input_names]
    third = "opts" if NAMES_RECORDED else "#2"  # without names, the position
    with pytest.raises(InputMismatchError, match=rf"missing positional input\(s\) \['{third}'\]"):
        sig.bind(args[:2], kwargs)
    with pytest.raises(InputMismatchError, match="expected at most 3 positional inputs, got 4"):
        sig.bind((*args, 1), kwargs)
    with pytest.raises(InputMismatchError, match=r"inputs\[0\]\[1\]: expected 2 items, got 1"):
        sig.bind((args[0], args[1][:1], args[2]), kwargs)
    with pytest.raises(InputMismatchError, match=re.escape(f"missing [{names[3]!r}]")):
        sig.bind_named({n: 1 for i, n in enumerate(names) if i != 3})
    leaves = sig.bind(args, kwargs)
    with pytest.raises(InputMismatchError, match=f"input {names[2]!r} dim 1: expected 4, got 5"):
        sig.check([*leaves[:2], torch.zeros(3, 5), *leaves[3:]])
    with pytest.raises(InputMismatchError, match="expected 5 inputs, got 4"):
        sig.check(leaves[:4])


def test_the_server_answers_leaves_from_leaves(serve_dyn_mlp_leaves):
    import threading

    server, x = serve_dyn_mlp_leaves
    done, answered = [], threading.Event()

    def on_done(result, error):
        done.append((result, error))
        answered.set()

    server.submit_leaves([x], on_done)
    assert answered.wait(30)
    assert len(done) == 1 and done[0][1] is None
    (out,) = done[0][0]  # one output leaf, not the model's structure
    assert torch.equal(out, server.predict(x)) and torch.equal(out, server.program(x))
    bad = []
    server.submit_leaves([torch.zeros(3, 8)], lambda result, error: bad.append(error))
    assert isinstance(bad[0], InputMismatchError) and "dim 1: expected 16, got 8" in str(bad[0])


@pytest.fixture
def serve_dyn_mlp_leaves(serve):
    return serve(FIXTURES / "zoo" / "dynamic_batch_mlp.pt2", batch_size=4), torch.randn(3, 16)
