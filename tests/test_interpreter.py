"""Issue: run any .pt2 on CPU or CUDA, equal to torch."""

from __future__ import annotations

import zipfile

import pytest
import torch
from conftest import CASES, requires_cuda
from fixture_cases import (
    case,
    device_change_tolerance,
    flatten_outputs,
    load_or_skip,
    reference_module,
    torch_outputs,
    torch_program,
)
from helpers import member_named, program_member, rewrite_zip

import pt2interp

# Stored references came from another machine and often another torch: they hold within
# these tolerances (by the output's dtype), never bit for bit. Exactness is checked against
# torch run in this process (test_fixture_outputs_equal_torch_in_process).
TOLERANCE = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (2e-2, 2e-2),
}


def _check_outputs(c, got: dict, want: dict, *, exact: bool):
    assert set(got) == set(want), f"output keys {sorted(got)} != {sorted(want)}"
    for key, w in want.items():
        g = got[key]
        if not isinstance(g, torch.Tensor):
            g = torch.tensor(g)
        if not isinstance(w, torch.Tensor):
            w = torch.tensor(w)

        def msg(m, key=key):
            return f"{c.id} {key}: {m}"

        if exact:
            torch.testing.assert_close(g, w, rtol=0, atol=0, msg=msg)
            continue
        rtol, atol = TOLERANCE.get(g.dtype, (0, 0))
        if c.device != "cpu":  # computed on another device
            rtol = atol = device_change_tolerance(g.dtype)
        if g.dtype == torch.bfloat16:  # numpy has no bfloat16: the npz holds these as float32
            g = g.float()
        torch.testing.assert_close(g, w.to(g.dtype), rtol=rtol, atol=atol, msg=msg)


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_fixture_outputs_match_reference(c):
    args, kwargs = c.inputs()
    out = load_or_skip(c)(*args, **kwargs)
    _check_outputs(c, flatten_outputs(out), c.expected(), exact=False)


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_fixture_outputs_equal_torch_in_process(c):
    """Bit for bit what torch's own loader computes here, on this CPU, with this torch."""
    want, why = torch_outputs(c)
    if want is None:
        pytest.skip(why)
    args, kwargs = c.inputs()
    _check_outputs(c, flatten_outputs(load_or_skip(c)(*args, **kwargs)), want, exact=True)


def _reference(c):
    """(torch's module, exact) for a zoo archive: ep.module() where this torch loads the file."""
    module, exact = reference_module(c)

    def run(*args, **kwargs):
        with torch.no_grad():
            return module(*args, **kwargs)

    return run, exact


def _assert_same(got, want, exact: bool):
    rtol, atol = (0, 0) if exact else (1e-5, 1e-5)
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("ir", ["training", "core"])
def test_matches_torch_export_load_exactly(ir):
    c = case("zoo", "tiny_resnet", ir)
    args, kwargs = c.inputs()
    ep, why = torch_program(c.path)
    if ep is None:
        pytest.skip(why)
    with torch.no_grad():
        want = ep.module()(*args, **kwargs)
    got = pt2interp.load(c.path)(*args, **kwargs)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("folder", ["zoo", "torch-2.5.1", "torch-2.7.1"])
@pytest.mark.parametrize("ir", ["training", "core"])
def test_counter_buffer_advances(folder, ir):
    c = case(folder, "counter", ir)
    (x,), _ = c.inputs()
    prog = pt2interp.load(c.path)
    first = prog(x)
    name = next(n for n in prog.state_dict() if "steps" in n)
    steps = [prog.state_dict()[name].item()]
    second = prog(x)
    steps.append(prog.state_dict()[name].item())
    prog(x)
    steps.append(prog.state_dict()[name].item())
    assert steps == [1, 2, 3]
    torch.testing.assert_close(second, first * 2)
    # the archive itself is never written: a fresh load starts again
    assert pt2interp.load(c.path).state_dict()[name].item() == 0


@pytest.mark.parametrize("ir", ["training", "core"])
def test_cond_takes_both_branches(ir):
    c = case("zoo", "cond", ir)
    (x,), _ = c.inputs()
    ref, exact = _reference(c)
    prog = pt2interp.load(c.path)
    taken = set()
    for inp in (x, -x):
        taken.add(bool(inp.sum() > 0))
        _assert_same(prog(inp), ref(inp), exact)
    assert taken == {True, False}


@pytest.mark.parametrize("ir", ["training", "core"])
def test_dynamic_batch(ir):
    c = case("zoo", "dynamic_batch_mlp", ir)
    (x,), _ = c.inputs()
    ref, exact = _reference(c)
    prog = pt2interp.load(c.path)
    for batch in (1, 7, 1024):
        inp = torch.randn(batch, *x.shape[1:])
        _assert_same(prog(inp), ref(inp), exact)
    with pytest.raises(
        pt2interp.InputMismatchError, match=r"dim 0: expected \w+ in 1\.\.1024, got 1025"
    ):
        prog(torch.randn(1025, *x.shape[1:]))


def test_input_errors_name_input_and_dimension():
    prog = pt2interp.load(case("zoo", "mlp").path)
    (x,), _ = case("zoo", "mlp").inputs()
    with pytest.raises(pt2interp.InputMismatchError, match=r"input 'x' dim 1: expected 16, got 5"):
        prog(torch.randn(x.shape[0], 5))
    with pytest.raises(
        pt2interp.InputMismatchError, match="expected dtype torch.float32, got torch.float64"
    ):
        prog(x.double())
    with pytest.raises(pt2interp.InputMismatchError, match="expected 2 dimensions"):
        prog(x[0])
    with pytest.raises(pt2interp.InputMismatchError, match="expected a tensor"):
        prog("not a tensor")
    with pytest.raises(pt2interp.InputMismatchError):
        prog(x, x)


def test_keyword_inputs_and_structured_outputs():
    c = case("zoo", "multi_io")
    args, kwargs = c.inputs()
    module, exact = _reference(c)
    ref = module(*args, **kwargs)
    out = pt2interp.load(c.path)(*args, **kwargs)
    assert isinstance(out, dict) and set(out) == set(ref)
    assert isinstance(out["pair"], tuple)
    _assert_same(out, ref, exact)
    with pytest.raises(pt2interp.InputMismatchError):
        pt2interp.load(c.path)(*args)  # the keyword input is missing


def test_module_wrapper_keeps_names_and_composes():
    c = case("zoo", "tiny_resnet")
    (x,), _ = c.inputs()
    prog = pt2interp.load(c.path)
    mod = prog.module()
    assert isinstance(mod, torch.nn.Module)
    want_keys = list(torch.load(c.state_dict_path, weights_only=True))
    assert list(mod.state_dict()) == want_keys
    torch.testing.assert_close(mod(x), prog(x), rtol=0, atol=0)
    # load_state_dict into the wrapper changes what it computes (it shares the program's weights)
    zeros = {k: torch.zeros_like(v) for k, v in mod.state_dict().items()}
    mod.load_state_dict(zeros)
    assert not torch.equal(mod(x), pt2interp.load(c.path)(x))
    assert torch.equal(mod(x), prog(x))
    # and it composes with autograd like any module
    out = mod(x.requires_grad_(True)).sum()
    out.backward()
    assert x.grad is not None


def test_hooks_see_every_node():
    c = case("zoo", "small_cnn")
    (x,), _ = c.inputs()
    prog = pt2interp.load(c.path)
    seen = []
    out = prog.run(x, on_node=lambda name, target, value: seen.append((name, target)))
    assert len(seen) >= len(prog.program.graph.nodes)
    assert any("conv" in t for _, t in seen)
    torch.testing.assert_close(out, prog(x), rtol=0, atol=0)


def test_fallback_ops_are_listed():
    prog = pt2interp.load(case("zoo", "mlp").path)
    assert isinstance(prog.fallback_ops(), list)


def test_runs_under_inference_mode_by_default_and_can_opt_out():
    c = case("zoo", "mlp")
    (x,), _ = c.inputs()
    assert pt2interp.load(c.path)(x).is_inference()
    out = pt2interp.load(c.path, inference_mode=False)(x)
    assert not out.is_inference()


def test_unknown_target_is_refused_not_imported(tmp_path):
    import json

    src = case("zoo", "mlp").path
    name = member_named(src, "models/model.json")
    with zipfile.ZipFile(src) as z:
        doc = json.loads(z.read(name))
    for target in ("os.system", "builtins.eval", "torch.load", "torch.ops.import_module.os.x"):
        doc["graph_module"]["graph"]["nodes"][0]["target"] = target
        p = rewrite_zip(src, tmp_path / "t.pt2", replace={name: json.dumps(doc).encode()})
        with pytest.raises(pt2interp.UnsupportedOpError, match="nodes\\[0\\]"):
            pt2interp.load(p)


@requires_cuda
@pytest.mark.parametrize("c", [c for c in CASES if c.folder == "zoo"], ids=lambda c: c.id)
def test_zoo_on_cuda(c):
    """The same program on CUDA and on CPU (not torch's ep.module().to("cuda"), which fails on
    programs with CPU-only kernels or devices recorded in factory ops)."""
    args, kwargs = c.inputs()
    prog = load_or_skip(c, device="cuda")
    assert prog.device.type == "cuda"
    out = flatten_outputs(prog(*args, **kwargs))
    want = flatten_outputs(load_or_skip(c)(*args, **kwargs))
    for key, w in want.items():
        g = out[key]
        assert g.device.type == "cuda" if isinstance(w, torch.Tensor) else True
        tol = 2e-2 if c.low_precision else 1e-3  # other kernels (TF32 off: conftest)
        torch.testing.assert_close(g.cpu(), w, rtol=tol, atol=tol)


@requires_cuda
def test_to_cuda_moves_factory_ops():
    c = case("zoo", "mini_gpt")  # arange for positions is recorded with device=cpu
    args, _ = c.inputs()
    prog = pt2interp.load(c.path).to("cuda")
    out = prog(*args)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), pt2interp.load(c.path)(*args), rtol=1e-4, atol=1e-4)


# -- higher-order ops exported here, beyond the fixture zoo -----------------------------------


@torch.library.custom_op("pt2interp_test::scale_", mutates_args=("x",))
def _scale_(x: torch.Tensor, k: float) -> None:
    x.mul_(k)


@_scale_.register_fake
def _scale_fake(x, k):
    return None


class _WhileLoop(torch.nn.Module):
    def forward(self, it, x):
        from torch._higher_order_ops.while_loop import while_loop

        return while_loop(lambda i, v: i < 5, lambda i, v: (i + 1, v * 2 + 1), (it, x))


class _Map(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4))

    def forward(self, xs, y):
        from torch._higher_order_ops.map import map as hop_map

        return hop_map(lambda x, y: x * self.w + y, xs, y)


class _MutatingCustomOp(torch.nn.Module):
    def forward(self, x):
        y = x.clone()
        _scale_(y, 3.0)
        return y + 1


def test_higher_order_keyword_inputs_without_recorded_kinds(tmp_path):
    """Archives before torch 2.7 record no input kinds: a higher-order op's named inputs are
    its keyword arguments (auto_functionalized's ``x=``, ``k=``), as torch's loader read them."""
    import json
    import warnings

    inputs = (torch.randn(3),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(_MutatingCustomOp(), inputs).run_decompositions()
    path = tmp_path / "hop.pt2"
    torch.export.save(ep, path)
    member = program_member(path)  # the new layout, or the legacy one torch 2.5 to 2.7 write
    with zipfile.ZipFile(path) as z:
        doc = json.loads(z.read(member))
    hops = [
        n
        for n in doc["graph_module"]["graph"]["nodes"]
        if n["target"].startswith("torch.ops.higher_order.")
    ]
    assert any(i["name"] for n in hops for i in n["inputs"]), "the op takes no keyword arguments"
    for node in doc["graph_module"]["graph"]["nodes"]:
        for named in node["inputs"]:
            named.pop("kind", None)
    doc["schema_version"] = {"major": 8, "minor": 6}  # as torch 2.6 wrote, before kinds
    replace = {member: json.dumps(doc).encode()}
    legacy = member.removesuffix("serialized_exported_program.json")
    if legacy != member:  # torch 2.5 to 2.7's layout: its version member must agree
        replace[legacy + "version"] = b"8.6"
    old = rewrite_zip(path, tmp_path / "old.pt2", replace=replace)
    with torch.no_grad():
        want = ep.module()(*inputs)
    torch.testing.assert_close(pt2interp.load(old)(*inputs), want, rtol=0, atol=0)


@pytest.mark.parametrize("core", [False, True], ids=["training", "core"])
@pytest.mark.parametrize(
    "make, args",
    [
        (_WhileLoop, lambda: (torch.tensor(0), torch.randn(3))),
        (_Map, lambda: (torch.randn(5, 4), torch.randn(4))),
        (_MutatingCustomOp, lambda: (torch.randn(3),)),
    ],
    ids=["while_loop", "map", "auto_functionalized"],
)
def test_higher_order_ops_match_torch(tmp_path, make, args, core):
    import warnings

    torch.manual_seed(0)
    inputs = args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(make(), inputs)
        if core:
            ep = ep.run_decompositions()
    path = tmp_path / "hop.pt2"
    torch.export.save(ep, path)
    want = ep.module()(*inputs)
    prog = pt2interp.load(path)
    got = prog(*inputs)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if make is _MutatingCustomOp:
        used = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        if (
            "auto_functionalized" in used
        ):  # older torch (2.8 does) wraps it in v1, which has a registry entry
            assert not any("auto_functionalized" in t for t in prog.fallback_ops())
        else:
            # the custom op (or auto_functionalized_v2) has none: the fallback runs it and says so
            assert any(
                "pt2interp_test" in t or "auto_functionalized" in t for t in prog.fallback_ops()
            )


def test_demo_compares_with_torch_in_this_process():
    """The README's first command: equal to torch bit for bit here, to the stored output within
    rounding."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pt2interp.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    torch_line = next(line for line in done.stdout.splitlines() if line.startswith("torch "))
    assert "equal, bit for bit" in torch_line or "not compared" in torch_line, torch_line
    stored_line = next(line for line in done.stdout.splitlines() if line.startswith("stored "))
    assert "equal" in stored_line and "DIFFERENT" not in stored_line, stored_line
