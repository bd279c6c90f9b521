"""The command line as a newcomer meets it: inputs by the names ``info`` prints (keyword inputs
included), outputs named alike everywhere, one-line errors with exit status 1 (missing optional
packages and devices included), ``--debug`` anywhere, help for every argument, files written with
the mode any new file gets, and torch imported only by the subcommands that need it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_cases import case
from safetensors.torch import load_file, save_file

import pt2interp
from pt2interp.cli import build_parser, main

MULTI_IO = case("zoo", "multi_io").path
MLP = case("zoo", "mlp").path
REPO = Path(__file__).resolve().parent.parent


def _cli(*argv: str, block: str = "") -> subprocess.CompletedProcess:
    """``pt2interp argv`` in a fresh interpreter; ``block`` names packages made unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {block.split(',') if block else []!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from pt2interp.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def _one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pt2interp: error: "), result.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _multi_io_inputs():
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(5, 6, generator=g),
        "b": torch.randn(5, 3, generator=g),
        "mask": torch.rand(5, 4, generator=g) > 0.3,
        "scale": torch.rand(4, generator=g) + 0.5,
    }


def _expected(values: dict) -> dict:
    prog = pt2interp.load(MULTI_IO)
    out = prog(values["a"], values["b"], values["mask"], scale=values["scale"])
    return prog.named_outputs(out)


# -- inputs ---------------------------------------------------------------------------------------


def test_random_fills_keyword_inputs_too(capsys):
    assert main(["run", str(MULTI_IO), "--random"]) == 0
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines()] == [
        "out.sum",
        "out.pair.0",
        "out.pair.1",
        "out.cat",
    ]


@pytest.mark.parametrize(
    "form", ["names.npz", "positions.npz", "names.safetensors", "names.pt", "mixed.npz"]
)
def test_inputs_by_name_or_position_in_every_format(tmp_path, form, capsys):
    values = _multi_io_inputs()
    names = list(values)
    keyed = (
        {f"in_{i}": v for i, v in enumerate(values.values())}
        if form.startswith("positions")
        else dict(values)
    )
    if form.startswith("mixed"):
        keyed = {
            "in_0": values["a"],
            "b": values["b"],
            "in_2": values["mask"],
            "scale": values["scale"],
        }
    path = tmp_path / form
    if form.endswith(".npz"):
        np.savez(path, **{k: v.numpy() for k, v in keyed.items()})
    elif form.endswith(".safetensors"):
        save_file(keyed, str(path))
    else:
        torch.save(keyed, path)
    out = tmp_path / "out.safetensors"
    assert main(["run", str(MULTI_IO), "--inputs", str(path), "-o", str(out)]) == 0
    got, want = load_file(out), _expected(values)
    assert set(got) == set(want) == set(pt2interp.load(MULTI_IO).output_names)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert names == [n for n, _ in pt2interp.load(MULTI_IO).input_names]


def test_the_fixtures_npz_runs_as_it_is(capsys):
    """A fixture's npz holds in_0, in_1, ... and its reference outputs: the outputs are skipped."""
    assert main(["run", str(MULTI_IO), "--inputs", str(MULTI_IO.with_suffix(".npz"))]) == 0


def test_wrong_input_names_list_the_expected_ones(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, a=np.zeros((5, 6), "float32"), scal=np.zeros(4, "float32"))
    result = _cli("run", str(MULTI_IO), "--inputs", str(path))
    _one_line_error(
        result,
        "unknown ['scal']",
        "missing ['b', 'mask', 'scale']",
        "a (in_0), b (in_1), mask (in_2), scale (in_3, keyword)",
    )


# -- one spelling of output names -----------------------------------------------------------------


def test_output_names_agree_between_info_run_and_serve(tmp_path):
    from pt2interp.serve.batching import BatchLayout

    schema = pt2interp.read_schema(MULTI_IO)
    layout = BatchLayout.from_program(pt2interp.read_program(MULTI_IO).model)
    out = tmp_path / "out.safetensors"
    assert main(["run", str(MULTI_IO), "--random", "-o", str(out)]) == 0
    names = [v.name for v in schema.outputs]
    assert names == [o.name for o in layout.outputs]
    assert sorted(names) == sorted(load_file(out))  # safetensors keeps its keys sorted
    assert [v.name for v in schema.inputs] == [i.name for i in layout.inputs]


# -- errors: one line, exit status 1 --------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, block, words",
    [
        (["serve", str(MLP)], "uvicorn", ["pip install 'pt2interp[serve]'"]),
        (["run", str(MLP)], "torch", ["`pt2interp run` needs torch: pip install torch"]),
        (["codegen", str(MLP)], "torch", ["needs torch"]),
        (["demo"], "torch", ["needs torch"]),
        (["info", "--check-ops", str(MLP)], "torch", ["needs torch"]),
        (["run", "no-such-file.pt2"], "", ["no-such-file.pt2"]),
        (["weights", str(MLP), "-o", "/no/such/folder/w.safetensors"], "", ["/no/such/folder"]),
    ],
    ids=[
        "serve-without-extras",
        "run-without-torch",
        "codegen-without-torch",
        "demo-without-torch",
        "check-ops-without-torch",
        "missing-archive",
        "unwritable-output",
    ],
)
def test_errors_are_one_line(argv, block, words):
    _one_line_error(_cli(*argv, block=block), *words)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_a_device_this_torch_lacks_is_one_line():
    _one_line_error(_cli("run", str(MLP), "--device", "cuda"), "cuda")


def test_debug_is_accepted_anywhere():
    result = _cli("run", "no-such-file.pt2", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "unrecognized arguments" not in result.stderr


def test_info_and_weights_never_import_torch(tmp_path):
    code = (
        "import sys\nfrom pt2interp.cli import main\n"
        f"main(['info', {str(MLP)!r}])\n"
        f"main(['weights', {str(MLP)!r}, '-o', {str(tmp_path / 'w.safetensors')!r}])\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.stdout.strip().endswith("torch not imported"), result.stdout + result.stderr


# -- help and files --------------------------------------------------------------------------------


def test_every_argument_has_help_and_defaults_show():
    parser = build_parser()
    subparsers = next(
        a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0]))
    )
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.dest} has no help"
    serve_help = subparsers.choices["serve"].format_help()
    assert "(default: 127.0.0.1)" in serve_help and "(default: 8080)" in serve_help


def test_written_files_get_the_usual_mode(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    outputs = [
        tmp_path / "run.safetensors",
        tmp_path / "weights.safetensors",
        tmp_path / "model.py",
        tmp_path / "model.safetensors",
    ]
    assert main(["run", str(MLP), "--random", "-o", str(outputs[0])]) == 0
    assert main(["weights", str(MLP), "-o", str(outputs[1])]) == 0
    assert main(["codegen", str(MLP), "-o", str(outputs[2]), "--weights", str(outputs[3])]) == 0
    for path in outputs:
        assert (path.stat().st_mode & 0o777) == 0o666 & ~mask, path


def test_codegen_says_how_to_load_what_it_wrote(tmp_path, capsys):
    assert (
        main(
            [
                "codegen",
                str(MLP),
                "-o",
                str(tmp_path / "net.py"),
                "--weights",
                str(tmp_path / "w.safetensors"),
            ]
        )
        == 0
    )
    assert "from net import load_safetensors" in capsys.readouterr().out
