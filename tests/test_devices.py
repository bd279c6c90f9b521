"""The device is the program's, not the file's: CUDA exports on CPU, CPU exports on CUDA.

The CPU half runs everywhere (CI has no GPU); the CUDA half is marked ``cuda`` and skips
cleanly without one. CUDA results are compared with the fixtures' references or with the
same program on CPU, never with torch's ``ep.module().to("cuda")`` (which fails on exactly
the programs these tests are about).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import CASES
from fixture_cases import (
    cuda_float32_as_computed_on,
    device_change_tolerance,
    flatten_outputs,
    load_or_skip,
)
from helpers import member_named, program_member, rewrite_zip

import pt2interp
from pt2interp.ops import attention

CUDA_EXPORTS = [c for c in CASES if c.device == "cuda"]


def _assert_close_across_devices(got: dict, want: dict, where: str) -> None:
    assert set(got) == set(want), where
    for key, w in want.items():
        g = got[key]
        g = g.detach().cpu() if isinstance(g, torch.Tensor) else torch.tensor(g)
        w = w.detach().cpu() if isinstance(w, torch.Tensor) else torch.tensor(w)
        tol = device_change_tolerance(g.dtype)
        if g.dtype == torch.bfloat16:  # the npz holds bfloat16 as float32
            g = g.float()
        torch.testing.assert_close(
            g, w.to(g.dtype), rtol=tol, atol=tol, msg=lambda m, k=key: f"{where} {k}: {m}"
        )


def test_the_cuda_exports_are_all_here():
    assert len(CUDA_EXPORTS) == 28


@pytest.mark.parametrize("c", CUDA_EXPORTS, ids=lambda c: c.id)
def test_cuda_exports_run_on_cpu(c):
    """Factory ops recorded with device=cuda, CUDA-only attention kernels: all on CPU."""
    args, kwargs = c.inputs()
    prog = pt2interp.load(c.path)
    assert prog.device.type == "cpu"
    out = flatten_outputs(prog(*args, **kwargs))
    for value in out.values():
        assert not isinstance(value, torch.Tensor) or value.device.type == "cpu"
    _assert_close_across_devices(out, c.expected(), c.id)


def _needs_values_or_autocast(c) -> str | None:
    """Why ``c`` cannot run on the meta device (which holds no values), or None."""
    prog = load_or_skip(c)
    reads = [
        b
        for b in prog.capture_plan.blockers
        if not b.why.startswith(("draws random", "dropout", "an op with side effects"))
    ]
    if reads:
        return f"needs tensor values: {reads[0]}"
    if any("autocast" in node.target for node in prog.program.graph.iter_nodes()):
        return "torch.autocast has no meta device"
    return None


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_every_tensor_follows_the_program_to_another_device(c):
    """CPU exports to CUDA, checked where there is no GPU: on the meta device (shapes, no
    data) every tensor any op makes, factory ops' included, must be on the program's device,
    and the outputs must have the references' shapes and dtypes. CUDA exports go from cuda
    to meta here, and to CPU above."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    why = _needs_values_or_autocast(c)
    if why:
        pytest.skip(why)
    prog = load_or_skip(c, device="meta")
    strays = []

    class Devices(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if any(
                isinstance(t, torch.Tensor) and t.device.type != "meta" for t in tree_leaves(out)
            ):
                strays.append(str(func))
            return out

    args, kwargs = c.inputs()
    args = [a.to("meta") for a in args]
    kwargs = {k: v.to("meta") for k, v in kwargs.items()}
    with Devices():
        out = flatten_outputs(prog(*args, **kwargs))
    assert not strays, f"made off the program's device by: {sorted(set(strays))}"
    want = c.expected()
    assert out.keys() == want.keys()
    for key, value in out.items():
        if not isinstance(value, torch.Tensor):
            continue
        assert value.device.type == "meta", key
        assert value.shape == want[key].shape, key
        dtype = torch.float32 if value.dtype == torch.bfloat16 else value.dtype  # npz has no bf16
        assert dtype == want[key].dtype, key


def test_a_device_this_torch_lacks_is_one_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    c = CASES[0]
    with pytest.raises(pt2interp.DeviceError, match="device 'cuda' is not available"):
        pt2interp.load(c.path, device="cuda")
    with pytest.raises(pt2interp.DeviceError, match="'cuda:3' is not available"):
        pt2interp.load(c.path).to("cuda:3")
    done = subprocess.run(
        [sys.executable, "-m", "pt2interp.cli", "run", str(c.path), "--random", "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "not available" in done.stderr, done.stderr


# -- the attention family on a device it was not recorded for ----------------------------------


def _qkv(seed=0, heads=2, length=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, length, 8, generator=g) for _ in range(3)]


@pytest.mark.parametrize("is_causal", [False, True])
def test_cuda_only_attention_kernels_have_cpu_stand_ins(is_causal):
    q, k, v = _qkv()
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if is_causal:
        scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    want_lse = scores.logsumexp(-1)
    eff = attention.efficient_attention(q, k, v, None, True, 0.0, is_causal)
    flash = attention.flash_attention(q, k, v, 0.0, is_causal)
    cudnn = attention.cudnn_attention(q, k, v, None, True, 0.0, is_causal)
    assert len(eff) == 4 and len(flash) == 9 and len(cudnn) == 9  # the recorded ops' tuples
    for out in (eff, flash, cudnn):
        torch.testing.assert_close(out[0], want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[1], want_lse, rtol=1e-5, atol=1e-5)
    assert flash[4] == 5 and flash[5] == 5  # max_q, max_k are sizes
    assert attention.efficient_attention(q, k, v, None, False, 0.0, is_causal)[1].numel() == 0


def test_attention_with_an_additive_bias_on_cpu():
    q, k, v = _qkv(1)
    bias = torch.randn(1, 2, 5, 5)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(
        attention.efficient_attention(q, k, v, bias, True)[0], want, rtol=1e-5, atol=1e-5
    )


def _mask(kind: str, queries: int, keys: int, seed: int = 0):
    """A mask that leaves every query at least one key (a fully masked row is NaN everywhere)."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(queries, keys, generator=g) > 0.4
    keep[:, 0] = True
    if kind == "bool":
        return keep
    return torch.randn(queries, keys, generator=g).masked_fill(~keep, float("-inf"))


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("keys", [5, 7, 8, 13])
def test_a_mask_becomes_the_bias_cudas_kernel_takes(kind, keys):
    """CUDA's memory-efficient kernel refuses a bias whose rows are not 8-element aligned, and
    takes no boolean mask: the recorded CPU kernel's mask is prepared as torch's own SDPA
    prepares it, with the same meaning."""
    q, _, _ = _qkv(2)
    k, v = (torch.randn(1, 2, keys, 8) for _ in range(2))
    mask = _mask(kind, 5, keys)
    bias = attention.efficient_bias(mask, q, k)
    assert bias.shape == (1, 2, 5, keys) and bias.dtype == q.dtype
    assert all(s % 8 == 0 for s in bias.stride()[:-1]), bias.stride()
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "kind, is_causal", [(None, False), (None, True), ("bool", False), ("float", False)]
)  # SDPA takes a mask or is_causal, not both
def test_attention_where_no_fused_kernel_serves_is_torchs(kind, is_causal, dtype):
    """The math fallback (a device with no fused kernel, or inputs the CUDA kernel refuses):
    torch's SDPA output, the CPU kernel's log-sum-exp, in float64 where given float64."""
    q, k, v = (t.to(dtype) for t in _qkv(3))
    mask = None if kind is None else _mask(kind, 5, 5, seed=3)
    if kind == "float":
        mask = mask.to(dtype)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)
    out, lse = attention._math_attention(q, k, v, mask, 0.0, is_causal, None)
    torch.testing.assert_close(out, want, rtol=tol, atol=tol)
    bias = None if mask is None else attention.efficient_bias(mask, q, k)
    _, cpu_lse = attention._attend(q, k, v, bias, 0.0, is_causal, None)
    torch.testing.assert_close(lse, cpu_lse, rtol=tol, atol=tol)
    dropped, _ = attention._math_attention(q, k, v, mask, 1.0, is_causal, None)
    assert torch.equal(dropped, torch.zeros_like(dropped))  # every weight dropped


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kind", [None, "bool", "float"])
@pytest.mark.parametrize("keys", [5, 13])
def test_cpu_recorded_attention_runs_on_cuda_with_any_mask(dtype, kind, keys):
    """A CPU export's ``_scaled_dot_product_flash_attention_for_cpu`` on CUDA: output and
    log-sum-exp as the CPU kernel gives them, for masks of unaligned lengths and dtypes the
    fused CUDA kernel lacks (float64 takes the math path)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    g = torch.Generator().manual_seed(keys)
    q = torch.randn(2, 3, 7, 16, generator=g)
    k, v = (torch.randn(2, 3, keys, 16, generator=g) for _ in range(2))
    mask = None if kind is None else _mask(kind, 7, keys, seed=keys)
    if kind == "float":
        mask = mask.to(dtype)
    elif kind == "bool":
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, float("-inf"))
    cpu = [t.to(dtype) for t in (q, k, v)]
    want = attention.flash_attention_for_cpu(*cpu, attn_mask=mask)
    got = attention.flash_attention_for_cpu(
        *(t.cuda() for t in cpu), attn_mask=None if mask is None else mask.cuda()
    )
    tol = device_change_tolerance(dtype)
    for w, o in zip(want[:2], got[:2], strict=True):
        torch.testing.assert_close(o.cpu(), w, rtol=tol, atol=tol)


# -- views of inputs another device laid out differently ---------------------------------------


def _node(target, inputs, out):
    return {
        "target": target,
        "inputs": [{"name": n, "arg": a, "kind": 1} for n, a in inputs],
        "outputs": [{"as_tensor": {"name": out}}],
        "metadata": {},
    }


def _mlp_rewritten(dst, nodes, out):
    """The zoo's mlp archive with its graph replaced by ``nodes`` on its input ``x`` (4, 16),
    returning ``out`` (described as the mlp's output)."""
    src = next(c for c in CASES if c.folder == "zoo" and c.name == "mlp").path
    member = member_named(src, "models/model.json")
    with zipfile.ZipFile(src) as z:
        doc = json.loads(z.read(member))
    graph = doc["graph_module"]["graph"]
    graph["nodes"], graph["outputs"] = nodes, [{"as_tensor": {"name": out}}]
    graph["tensor_values"][out] = graph["tensor_values"]["linear_1"]
    doc["graph_module"]["signature"]["output_specs"] = [
        {"user_output": {"arg": {"as_tensor": {"name": out}}}}
    ]
    return rewrite_zip(src, dst, replace={member: json.dumps(doc).encode()})


def _transposed_view_archive(tmp_path, write_after: bool):
    """x (4, 16) -> transpose -> view(16, 4): export on a device whose transpose were
    contiguous would record this; here the view meets a non-contiguous input."""
    x = {"as_tensor": {"name": "x"}}
    nodes = [
        _node(
            "torch.ops.aten.transpose.int",
            [("self", x), ("dim0", {"as_int": 0}), ("dim1", {"as_int": 1})],
            "t",
        ),
        _node(
            "torch.ops.aten.view.default",
            [("self", {"as_tensor": {"name": "t"}}), ("size", {"as_ints": [8, 8]})],
            "v",
        ),
    ]
    if write_after:
        nodes.append(
            _node(
                "torch.ops.aten.add_.Tensor",
                [("self", {"as_tensor": {"name": "v"}}), ("other", {"as_int": 1})],
                "w",
            )
        )
    out = "w" if write_after else "v"
    return _mlp_rewritten(tmp_path / f"view_{write_after}.pt2", nodes, out)


def test_a_view_of_a_differently_laid_out_input_becomes_a_reshape(tmp_path):
    x = torch.randn(4, 16)
    got = pt2interp.load(_transposed_view_archive(tmp_path, write_after=False))(x)
    assert torch.equal(got, x.t().reshape(8, 8))


def test_a_view_that_must_alias_says_so(tmp_path):
    prog = pt2interp.load(_transposed_view_archive(tmp_path, write_after=True))
    with pytest.raises(
        pt2interp.ExecutionError, match="view cannot become a copy: the graph writes into it"
    ):
        prog(torch.randn(4, 16))


def test_an_op_bound_to_another_device_is_one_line_naming_op_and_device(tmp_path):
    """An op with kernels for some devices only (``cudnn_grid_sampler``: CUDA) on one it lacks:
    torch's paragraph about custom builds and dispatch keys becomes one line."""
    x = {"as_tensor": {"name": "x"}}
    nodes = [_node("torch.ops.aten.cudnn_grid_sampler.default", [("self", x), ("grid", x)], "g")]
    prog = pt2interp.load(_mlp_rewritten(tmp_path / "cudnn.pt2", nodes, "g"))
    with pytest.raises(pt2interp.ExecutionError) as caught:
        prog(torch.randn(4, 16))
    message = str(caught.value)
    assert "graph.nodes[0] (g, torch.ops.aten.cudnn_grid_sampler.default) failed: " in message
    assert "aten::cudnn_grid_sampler has no kernel for cpu" in message
    assert "\n" not in message and "custom build" not in message


# -- autocast regions --------------------------------------------------------------------------


class _Autocast(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = self.lin(x)
        return y.float() + 1


def _autocast_archive(tmp_path, exported_on: str):
    """A training-IR autocast region as ``exported_on`` would record it: its device type and
    every tensor's device say ``exported_on`` (only a GPU could export the CUDA one)."""
    from helpers import export_or_skip, save_or_skip

    torch.manual_seed(0)
    module = _Autocast()
    src = save_or_skip(export_or_skip(module, (torch.randn(2, 8),)), tmp_path / "exported.pt2")
    member = program_member(src)
    text = zipfile.ZipFile(src).read(member).decode()
    if exported_on != "cpu":
        text = text.replace('"as_string": "cpu"', f'"as_string": "{exported_on}"')
        text = text.replace('"type": "cpu"', f'"type": "{exported_on}"')
    doc = json.loads(text)
    (region,) = [
        n
        for n in doc["graph_module"]["graph"]["nodes"]
        if n["target"].endswith("wrap_with_autocast")
    ]
    assert region["inputs"][0]["arg"] == {"as_string": exported_on}
    return module, rewrite_zip(
        src, tmp_path / f"autocast_{exported_on}.pt2", replace={member: text.encode()}
    )


def test_an_autocast_region_follows_the_program_to_cpu(tmp_path):
    """A CUDA export's ``autocast("cuda")`` region, run on CPU, autocasts on CPU (as the program
    did where it was exported), not a CUDA autocast that CPU kernels ignore."""
    module, path = _autocast_archive(tmp_path, "cuda")
    x = torch.randn(2, 8)
    with torch.no_grad():
        want = module(x)  # autocast on the device the program runs on
        plain = module.lin(x) + 1
    got = pt2interp.load(path, device="cpu")(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.allclose(got, plain, rtol=0, atol=1e-6), "bfloat16 autocast changes the result"


def test_an_autocast_region_for_another_device_stays_for_that_device(tmp_path):
    """A CPU program's region for another device type (a no-op where it was exported) stays one."""
    module, path = _autocast_archive(tmp_path, "cpu")
    member = program_member(path)
    doc = json.loads(
        zipfile.ZipFile(path)
        .read(member)
        .decode()
        .replace('"as_string": "cpu"', '"as_string": "cuda"')
    )
    graph = doc["graph_module"]["graph"]  # export would have recorded no bfloat16 check after it
    graph["nodes"] = [n for n in graph["nodes"] if "_assert_tensor_metadata" not in n["target"]]
    other = rewrite_zip(
        path, tmp_path / "autocast_other.pt2", replace={member: json.dumps(doc).encode()}
    )
    x = torch.randn(2, 8)
    with torch.no_grad():
        plain = module.lin(x) + 1
    with pytest.warns(
        UserWarning, match="(?i)cuda"
    ):  # torch: CUDA autocast without CUDA is disabled
        got = pt2interp.load(other, device="cpu")(x)
    torch.testing.assert_close(got, plain)


# -- on a GPU ----------------------------------------------------------------------------------


@pytest.mark.cuda
def test_an_autocast_region_follows_the_program_to_cuda(tmp_path):
    module, path = _autocast_archive(tmp_path, "cpu")
    x = torch.randn(2, 8)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        want = module.cuda().lin(x.cuda()).float() + 1
    got = pt2interp.load(path, device="cuda")(x.cuda())
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_means_the_current_cuda_device_from_load_on():
    c = next(c for c in CASES if c.folder == "zoo" and c.name == "mini_gpt")
    here = torch.device("cuda", torch.cuda.current_device())
    prog = pt2interp.load(c.path, device="cuda")
    assert prog.device == here  # with its index: inputs on it are not moved again
    args, kwargs = c.inputs()
    assert all(t.device == here for t in flatten_outputs(prog(*args, **kwargs)).values())
    assert pt2interp.load(c.path).to("cuda").device == here


@pytest.mark.cuda
@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_every_fixture_runs_on_cuda(c):
    args, kwargs = c.inputs()
    with cuda_float32_as_computed_on(c.device):
        out = flatten_outputs(pt2interp.load(c.path, device="cuda")(*args, **kwargs))
    for value in out.values():
        assert not isinstance(value, torch.Tensor) or value.device.type == "cuda"
    _assert_close_across_devices(out, c.expected(), c.id)
