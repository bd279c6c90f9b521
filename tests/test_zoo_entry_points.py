"""The zoo's models for what issue-sized gaps were found in (data-dependent sizes, bicubic
interpolation's scalar-first ops, loops, grad and autocast regions, dunder bit ops, functorch
transforms), each in training IR and core ATen, through every entry point a user has: the CLI's
``info``, ``weights`` (safetensors and numpy), ``run`` and ``codegen``, the Python
``read_schema``/``extract_weights``/``load``, and the model server.

Running and the generated code are compared with torch in this process elsewhere
(test_interpreter.py, test_codegen.py); here each entry point must work and agree with the
archive's own reference outputs or weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CASES
from fixture_cases import flatten_outputs, generated_code_runs_or_skip, load_or_skip
from safetensors.numpy import load_file

import pt2interp
from pt2interp.cli import main

NAMES = ("data_dependent", "bicubic", "loops", "regions", "bit_ops", "batched")
ZOO_CASES = [c for c in CASES if c.folder == "zoo" and c.name in NAMES]


def test_every_class_is_here_in_both_irs():
    assert sorted((c.name, c.ir) for c in ZOO_CASES) == sorted(
        (n, ir) for n in NAMES for ir in ("training", "core")
    )


def _close(got: torch.Tensor, want: torch.Tensor, where: str):
    if got.dtype == torch.bfloat16:  # the npz holds bfloat16 as float32
        got = got.float()
    tol = 2e-2 if want.dtype in (torch.float16, torch.bfloat16) or "regions" in where else 1e-5
    torch.testing.assert_close(
        got, want.to(got.dtype), rtol=tol, atol=tol, msg=lambda m: f"{where}: {m}"
    )


@pytest.mark.parametrize("c", ZOO_CASES, ids=lambda c: c.id)
def test_cli_info_and_read_schema(c, capsys):
    assert main(["info", str(c.path)]) == 0
    text = capsys.readouterr().out
    assert "not read" not in text  # every symbolic value of these programs parses
    assert main(["info", "--json", str(c.path)]) == 0
    described = json.loads(capsys.readouterr().out)
    schema = pt2interp.read_schema(c.path)
    assert [i["name"] for i in described["inputs"]] == [i.name for i in schema.inputs]
    assert not schema.unreadable


@pytest.mark.parametrize("c", ZOO_CASES, ids=lambda c: c.id)
def test_cli_weights_and_extract_weights(c, tmp_path, capsys):
    out, npz = tmp_path / "w.safetensors", tmp_path / "w.npz"
    assert main(["weights", str(c.path), "-o", str(out), "--numpy", str(npz)]) == 0
    state = torch.load(c.state_dict_path, weights_only=True)
    tensors, arrays = load_file(out), np.load(npz)
    extracted = pt2interp.extract_weights(c.path)
    for name, want in state.items():
        want = want.float() if want.dtype == torch.bfloat16 else want
        assert np.array_equal(np.asarray(tensors[name], dtype=tensors[name].dtype), want.numpy()), (
            name
        )
        assert np.array_equal(arrays[name], want.numpy()), name
        assert np.array_equal(np.asarray(extracted[name]), want.numpy()), name


@pytest.mark.parametrize("c", ZOO_CASES, ids=lambda c: c.id)
def test_cli_run_equals_the_reference(c, tmp_path, capsys):
    from safetensors.torch import load_file as load_tensors

    load_or_skip(c)  # an archive from a newer torch may use ops this one lacks
    args, kwargs = c.inputs()
    assert not kwargs
    inputs = tmp_path / "in.npz"
    np.savez(
        inputs,
        **{
            f"in_{i}": (a.float() if a.dtype == torch.bfloat16 else a).numpy()
            for i, a in enumerate(args)
        },
    )
    out = tmp_path / "out.safetensors"
    assert main(["run", str(c.path), "--inputs", str(inputs), "-o", str(out)]) == 0
    got = load_tensors(out)
    want = c.expected()
    assert set(got) == set(want)
    for key, w in want.items():
        _close(got[key], w, f"{c.id} {key}")


@pytest.mark.parametrize("c", ZOO_CASES, ids=lambda c: c.id)
def test_cli_codegen_writes_runnable_source(c, tmp_path, capsys):
    load_or_skip(c)
    generated_code_runs_or_skip(c)
    source, weights = tmp_path / "model.py", tmp_path / "model.safetensors"
    assert main(["codegen", str(c.path), "-o", str(source), "--weights", str(weights)]) == 0
    namespace: dict = {}
    exec(compile(source.read_text(), str(source), "exec"), namespace)  # noqa: S102 (our own output, under test)
    model = namespace["load_safetensors"](str(weights))
    args, _ = c.inputs()
    with torch.no_grad():
        got = flatten_outputs(model(*args))
    for key, want in c.expected().items():
        _close(torch.as_tensor(got[key]), want, f"{c.id} {key}")


@pytest.mark.parametrize("c", ZOO_CASES, ids=lambda c: c.id)
def test_served(c):
    from pt2interp.serve import Server

    load_or_skip(c)
    server = Server(c.path, name=f"zoo-{c.id}")
    try:
        args, _ = c.inputs()
        got = flatten_outputs(server.predict(*args))
        for key, want in c.expected().items():
            _close(torch.as_tensor(got[key]), want, f"{c.id} {key}")
    finally:
        server.close()
