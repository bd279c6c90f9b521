"""Training IR's functorch calls (``torch.vmap``, ``torch.func.jvp``, generic ``associative_scan``).

They run from a fixed table (``pt2interp.ops.functorch.ADMITTED``), never a name looked up on
``torch``; a graph whose enters and exits do not pair up is refused before it runs; a run that
fails inside a transform leaves this thread outside it; a program run inside the caller's own
``vmap`` says so rather than computing at the wrong level.
"""

from __future__ import annotations

import inspect
import json
import zipfile

import pytest
import torch
from fixture_cases import case, release
from helpers import export_or_skip, program_member, rewrite_zip, save_or_skip

import pt2interp
from pt2interp.ops.functorch import ADMITTED


class VMap(torch.nn.Module):
    def forward(self, x, y):
        return torch.vmap(lambda a, b: (a * b).sum(), in_dims=(0, None))(x, y)


class Jvp(torch.nn.Module):
    def forward(self, x, t):
        return torch.func.jvp(torch.sin, (x,), (t,))


class GenericAssociativeScan(torch.nn.Module):
    def forward(self, x):
        from torch._higher_order_ops.associative_scan import associative_scan

        return associative_scan(lambda a, b: a * b + b, x, dim=0, combine_mode="generic")


def _saved(tmp_path, module, args, name):
    return save_or_skip(export_or_skip(module, args), tmp_path / f"{name}.pt2")


def _functorch_targets(path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        doc = json.loads(z.read(program_member(path)))
    return [
        n["target"]
        for n in doc["graph_module"]["graph"]["nodes"]
        if n["target"].startswith("torch._functorch")
    ]


def _edited(tmp_path, src, edit, name="edited"):
    member = program_member(src)
    with zipfile.ZipFile(src) as z:
        doc = json.loads(z.read(member))
    edit(doc["graph_module"]["graph"])
    return rewrite_zip(src, tmp_path / f"{name}.pt2", replace={member: json.dumps(doc).encode()})


@pytest.mark.parametrize(
    "make, args",
    [
        (VMap, lambda: (torch.randn(4, 3), torch.randn(3))),
        (Jvp, lambda: (torch.randn(3), torch.randn(3))),
        (GenericAssociativeScan, lambda: (torch.randn(5, 3),)),
    ],
    ids=["vmap", "jvp", "associative_scan"],
)
@pytest.mark.parametrize("inference_mode", [True, False])
def test_training_ir_transforms_run_as_torch_runs_them(tmp_path, make, args, inference_mode):
    inputs = args()
    path = _saved(tmp_path, make(), inputs, make.__name__)
    if not _functorch_targets(path):  # else this test tests nothing
        assert release(torch.__version__) < release(case("zoo", "mlp").torch_version), (
            "the zoo's torch records functorch calls in training IR"
        )
        pytest.skip(f"torch {torch.__version__}'s training IR of it has no functorch calls")
    want = torch.export.load(path).module()(*inputs)
    got = pt2interp.load(path, inference_mode=inference_mode)(*inputs)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch._C._functorch.maybe_current_level() is None
    assert torch._C._is_fwd_grad_enabled()  # jvp's forward-AD switch is put back


def test_the_table_is_torchs_predispatch_module():
    """Every function torch's predispatch module defines is in the table, each with its reason,
    and nothing else: a call torch adds shows up here."""
    predispatch = pytest.importorskip("torch._functorch.predispatch")
    defined = {
        name
        for name, fn in inspect.getmembers(predispatch, inspect.isfunction)
        if fn.__module__ == predispatch.__name__
    }
    assert defined <= set(ADMITTED)
    if release(torch.__version__) >= (2, 13):  # the jvp calls came with torch 2.13
        assert defined == set(ADMITTED)
    assert all(why for _kernel, why, _enters, _exits in ADMITTED.values())


@pytest.mark.parametrize(
    "target",
    [
        "torch._functorch.predispatch.os",
        "torch._functorch.eager_transforms.grad",
        "torch._functorch.predispatch.__builtins__",
    ],
)
def test_other_functorch_names_are_refused(tmp_path, target):
    path = _saved(tmp_path, VMap(), (torch.randn(4, 3), torch.randn(3)), "vmap")

    def rename(graph):
        graph["nodes"][0]["target"] = target

    with pytest.raises(pt2interp.UnsupportedOpError, match="neither a torch.ops op"):
        pt2interp.load(_edited(tmp_path, path, rename))


@pytest.mark.parametrize("drop", ["_vmap_decrement_nesting", "_vmap_increment_nesting"])
def test_unpaired_levels_are_refused_before_running(tmp_path, drop):
    path = _saved(tmp_path, VMap(), (torch.randn(4, 3), torch.randn(3)), "vmap")

    def without(graph):
        graph["nodes"] = [n for n in graph["nodes"] if not n["target"].endswith(drop)]
        if drop == "_vmap_increment_nesting":  # keep the graph otherwise well formed
            graph["nodes"] = [
                n
                for n in graph["nodes"]
                if not n["target"].endswith(("_add_batch_dim", "_remove_batch_dim"))
            ]

    with pytest.raises(
        pt2interp.GraphError, match="functorch levels it never leaves|has not entered"
    ):
        pt2interp.load(_edited(tmp_path, path, without))
    assert torch._C._functorch.maybe_current_level() is None


def test_a_failure_inside_vmap_leaves_the_thread_outside_it(tmp_path):
    path = _saved(tmp_path, VMap(), (torch.randn(4, 3), torch.randn(3)), "vmap")

    def bad_batch_dim(graph):
        (node,) = [n for n in graph["nodes"] if n["target"].endswith("_add_batch_dim")]
        node["inputs"][1]["arg"] = {"as_int": 7}  # no such dimension: fails inside the vmap level

    program = pt2interp.load(_edited(tmp_path, path, bad_batch_dim))
    with pytest.raises(pt2interp.ExecutionError, match="Dimension out of range"):
        program(torch.randn(4, 3), torch.randn(3))
    assert torch._C._functorch.maybe_current_level() is None
    # and the thread still computes plainly: a tensor op is not batched by a leftover level
    x, y = torch.randn(4, 3), torch.randn(3)
    torch.testing.assert_close(pt2interp.load(path)(x, y), (x * y).sum(1))


def test_a_program_run_inside_the_callers_vmap_says_so(tmp_path):
    path = _saved(tmp_path, VMap(), (torch.randn(4, 3), torch.randn(3)), "vmap")
    program = pt2interp.load(path)
    y = torch.randn(3)
    with pytest.raises(pt2interp.ExecutionError, match="exported at the top level"):
        torch.vmap(lambda x: program(x, y))(torch.randn(2, 4, 3))
    assert torch._C._functorch.maybe_current_level() is None


def test_functorch_calls_are_written_as_python(tmp_path):
    from pt2interp.codegen import to_python

    path = _saved(tmp_path, VMap(), (torch.randn(4, 3), torch.randn(3)), "vmap")
    source = to_python(path)
    assert "torch._functorch.predispatch._vmap_increment_nesting(4, 'error')" in source.replace(
        '"', "'"
    )
