"""Issue: ``pt2interp.to_python`` writes a .pt2 back as readable nn.Module source.

Every fixture round-trips: the generated source is executed, the archive's state dict loads
with ``strict=True`` and the module's outputs equal the interpreter's (bit for bit for the
zoo, which this torch exported; within float rounding for archives from older releases,
whose parameters do not record ``requires_grad``, so some kernels take other paths). Both
sides run in each grad mode in turn: with gradients enabled, as export traced the program,
under ``torch.no_grad()`` and under ``torch.inference_mode()``. Standard layers whose own
forward takes a fast path without gradients (``nn.MultiheadAttention``) are called through
the functional form of the path export recorded; kernels that pick their path by grad mode
themselves (``aten.lstm``) do so in the interpreter too.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import json
import math
import shutil
import subprocess
import sys
import tempfile
import tokenize
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import CASES, requires_cuda
from fixture_cases import FIXTURES, case, flatten_outputs, generated_code_runs_or_skip, load_or_skip
from helpers import export_or_skip, leave_functorch_levels, program_member, rewrite_zip
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pt2interp
from pt2interp.codegen import printer, to_python
from pt2interp.codegen.names import comment, identifier, string_literal

sys.path.insert(0, str(FIXTURES.parent))  # fixtures.zoo: the exporting modules

RUFF = shutil.which("ruff")


@functools.cache
def generated(path: Path) -> str:
    return to_python(path)


def build(source: str, class_name: str = "Model"):
    namespace: dict = {}
    exec(compile(source, "generated.py", "exec"), namespace)  # noqa: S102 (our own output, under test)
    return namespace, namespace[class_name]


def _detach(out: dict) -> dict:
    return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}


def _compare(c, got: dict, want: dict, exact: bool) -> None:
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        if not isinstance(w, torch.Tensor):
            assert g == w, key
            continue
        assert (g.dtype, g.shape) == (w.dtype, w.shape), key
        if exact:
            torch.testing.assert_close(
                g, w, rtol=0, atol=0, msg=lambda m, k=key: f"{c.id} {k}: {m}"
            )
        elif w.dtype in (torch.float16, torch.bfloat16):
            torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2)
        else:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def _branch_inputs(c, args):
    """For the cond models, also the negated input: the other branch."""
    if c.name != "cond":
        return [args]
    return [args, tuple(-a for a in args)]


# -- round trip on every fixture ---------------------------------------------------------------

GRAD_MODES = {
    "grad": contextlib.nullcontext,
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}


@pytest.mark.parametrize("mode", GRAD_MODES)
@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_round_trip(c, mode):
    reference = load_or_skip(c, inference_mode=False)  # runs in the caller's grad mode
    generated_code_runs_or_skip(c)
    namespace, _ = build(generated(c.path))
    program = pt2interp.read_program(c.path)
    model = namespace["from_pt2"](c.path)  # the state dict with strict=True, then the constants
    assert set(model.state_dict()) == set(program.state_dict())
    model.eval()
    args, kwargs = c.inputs()
    with GRAD_MODES[mode]():
        try:
            for inputs in _branch_inputs(c, args):
                # twice: buffers a program mutates (counter) must advance alike
                for _ in range(2):
                    got = _detach(flatten_outputs(model(*inputs, **kwargs)))
                    want = _detach(flatten_outputs(reference(*inputs, **kwargs)))
                    _compare(c, got, want, exact=c.keeps_every_name)
        finally:
            # code failing inside a vmap/jvp level stays in it; leaving it restores the grad
            # mode it was entered in, so inside the mode's block, which then restores the caller's
            leave_functorch_levels()


def test_attention_calls_the_path_export_recorded():
    """nn.MultiheadAttention stays in the module (its state-dict names load), but forward calls
    the functional form of its slow path: the layer's own forward takes a fused fast path
    without gradients, which rounds differently from the recorded ops."""
    source = generated(case("zoo", "encoder").path)
    assert "self.self_attn = nn.MultiheadAttention(32, 4, batch_first=True)" in source
    assert "= multihead_self_attention(self.self_attn, x)" in source
    assert "F.multi_head_attention_forward(" in source and "self.self_attn(" not in source
    namespace, _ = build(source)
    layer = namespace["from_pt2"](case("zoo", "encoder").path).encoder.layers[0].self_attn
    x = torch.randn(2, 5, 32)
    with torch.enable_grad():
        want = layer(x, x, x, need_weights=False)[0]  # the slow path
    for mode in GRAD_MODES.values():
        with mode():
            torch.testing.assert_close(
                namespace["multihead_self_attention"](layer, x), want, rtol=0, atol=0
            )


def test_from_pt2_helper_loads_weights():
    c = case("zoo", "mini_gpt")
    namespace, _ = build(generated(c.path))
    model = namespace["from_pt2"](c.path)
    assert model.head.weight is model.tok_emb.weight  # tied, as in the original
    (idx,), _ = c.inputs()
    want = pt2interp.load(c.path, inference_mode=False)(idx)
    torch.testing.assert_close(model(idx).detach(), want.detach(), rtol=0, atol=0)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["mini_gpt", "tiny_resnet", "lstm", "cond"])
def test_generated_module_runs_on_cuda(name):
    # factory ops follow the input's device (`torch.arange(n, device=idx.device)`)
    c = case("zoo", name)
    namespace, _ = build(generated(c.path))
    model = namespace["from_pt2"](c.path).to("cuda")
    reference = pt2interp.load(c.path, device="cuda", inference_mode=False)
    args, kwargs = c.inputs()
    args = tuple(a.cuda() for a in args)
    got = _detach(flatten_outputs(model(*args, **kwargs)))
    want = _detach(flatten_outputs(reference(*args, **kwargs)))
    for key, w in want.items():
        assert got[key].device.type == "cuda"
        torch.testing.assert_close(got[key], w, rtol=1e-4, atol=1e-4)


# -- standard layers -----------------------------------------------------------------------


def _standard_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(elements in torch.nn layers, all elements); tied parameters counted once."""
    seen: set[int] = set()
    standard = total = 0
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            if type(module).__module__.startswith("torch.nn."):
                standard += p.numel()
    return standard, total


def test_parameters_live_in_standard_layers():
    standard = total = 0
    for c in CASES:
        if c.folder != "zoo" or c.ir != "training":
            continue
        _, model_class = build(generated(c.path))
        s, t = _standard_parameters(model_class())
        standard, total = standard + s, total + t
    assert total > 100_000
    assert standard / total >= 0.95, f"{standard}/{total} = {standard / total:.3f}"


def _check_resnet(path: Path, state_dict_path: Path) -> dict:
    source = generated(path)
    _, model_class = build(source)
    model = model_class()
    kinds = {type(m) for m in model.modules()}
    assert {torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear} <= kinds
    classes: dict[str, list] = {}
    for m in model.modules():
        if m is not model and not type(m).__module__.startswith("torch"):
            classes.setdefault(type(m).__name__, []).append(m)
    # one class for the five plain blocks, one for the three with a downsample shortcut
    assert sorted(len(v) for v in classes.values()) == [3, 5], classes.keys()
    state = torch.load(state_dict_path, weights_only=True)
    model.load_state_dict(state, strict=True)
    return {"model": model.eval(), "classes": sorted(classes), "source": source}


def test_tiny_resnet_structure_and_original_checkpoint():
    from fixtures import zoo

    c = case("zoo", "tiny_resnet")
    found = _check_resnet(c.path, c.state_dict_path)
    assert found["classes"] == ["BasicBlock", "BasicBlock_2"]
    assert "class BasicBlock(nn.Module):" in found["source"]
    original = zoo.ZOO["tiny_resnet"].module()
    original.load_state_dict(torch.load(c.state_dict_path, weights_only=True))
    (x,), _ = c.inputs()
    torch.testing.assert_close(found["model"](x), original(x), rtol=0, atol=0)


@pytest.mark.slow
def test_resnet18_structure_and_original_checkpoint():
    from fixtures.make_fixtures import ensure_large_fixture

    folder = ensure_large_fixture("resnet18")
    entry = json.loads((folder / "manifest.json").read_text())["models"]["resnet18"]
    for ir in ("file", "file_core"):
        found = _check_resnet(folder / entry[ir], folder / "resnet18.state.pt")
        assert found["classes"] == ["BasicBlock", "BasicBlock_2"]


# -- the generated text ----------------------------------------------------------------------


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed")
def test_generated_files_pass_ruff(tmp_path):
    for c in CASES:
        name = f"{c.folder}_{c.path.stem}".replace("-", "_").replace(".", "_")
        (tmp_path / f"{name}.py").write_text(generated(c.path))
    # --isolated: ruff's defaults, not this repository's settings
    check = subprocess.run(
        [RUFF, "check", "--isolated", "--no-cache", "--output-format", "concise", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout[-3000:]
    fmt = subprocess.run(
        [RUFF, "format", "--isolated", "--no-cache", "--check", "--diff", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert fmt.returncode == 0, fmt.stdout[-3000:]


def test_forward_keeps_names_structure_and_source_lines():
    source = generated(case("zoo", "multi_io").path)
    assert "def forward(self, a, b, mask, *, scale):" in source
    assert 'return {"sum": ' in source and '"pair": (' in source
    assert "# h = self.proj(a) * scale" in source
    bare = to_python(case("zoo", "multi_io").path, comments=False, class_name="MultiIO")
    assert "#" not in bare[bare.index("class ") : bare.index("def from_pt2")]
    assert "class MultiIO(nn.Module):" in bare


def test_cond_is_an_if_calling_two_branch_methods():
    source = generated(case("zoo", "cond").path)
    assert "if gt:" in source and "def true_branch(self, x):" in source
    assert "def false_branch(self, x):" in source and "torch . cond" not in _code_without_strings(
        source
    )


@pytest.fixture(scope="module")
def dynamic_archive(tmp_path_factory):
    """A model exported with a dynamic batch, a nested input, a namedtuple output and a
    non-persistent buffer."""
    import collections

    from torch.utils._pytree import _register_namedtuple

    Out = collections.namedtuple("Out", ["logits", "features"])
    _register_namedtuple(Out, serialized_type_name="test_codegen.Out")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 8 * 8, 5)
            self.register_buffer("offset", torch.randn(5), persistent=False)

        def forward(self, x, pair):
            h = torch.relu(self.conv(x + pair[0] * pair[1]))
            flat = h.view(h.shape[0], -1)
            return Out(self.fc(flat) + self.offset, flat)

    torch.manual_seed(0)
    pair = (torch.randn(3, 8, 8), torch.randn(3, 8, 8))
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(
        Net().eval(),
        (torch.randn(2, 3, 8, 8), pair),
        dynamic_shapes={"x": {0: batch}, "pair": (None, None)},
    )
    path = tmp_path_factory.mktemp("dyn") / "dyn.pt2"
    torch.export.save(ep, path)
    return path, pair


def _records_namedtuple_fields(path) -> bool:
    with zipfile.ZipFile(path) as z:
        return bool(
            json.loads(z.read(program_member(path)))["graph_module"].get(
                "treespec_namedtuple_fields"
            )
        )


def test_dynamic_dims_stay_dynamic(dynamic_archive):
    path, pair = dynamic_archive
    source = to_python(path)
    assert "x.shape[0]" in source and "Out = namedtuple(" in source and "pair[0]" in source
    namespace, _ = build(source)
    model = namespace["from_pt2"](path)
    reference = pt2interp.load(path, inference_mode=False)
    for batch in (1, 2, 7):
        x = torch.randn(batch, 3, 8, 8)
        got, want = model(x, pair), reference(x, pair)
        # torch 2.5 writes no namedtuple field names: then both say field_0, field_1
        fields = (
            ("logits", "features") if _records_namedtuple_fields(path) else ("field_0", "field_1")
        )
        assert type(got).__name__ == "Out" and got._fields == fields
        for g, w in zip(got, want):
            torch.testing.assert_close(g.detach(), w.detach(), rtol=0, atol=0)


class _NestedCond(torch.nn.Module):
    """torch.cond with two outputs, a nested cond and a parameter read in a branch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4))

    def forward(self, x):
        def outer_true(x):
            return torch.cond(
                x.max() > 1, lambda x: x * self.w, lambda x: x - self.w, (x,)
            ), x.sin()

        def outer_false(x):
            return x.cos(), x + 1

        a, b = torch.cond(x.sum() > 0, outer_true, outer_false, (x,))
        return a + b


class _MoreLayers(torch.nn.Module):
    """Layers the zoo lacks: Embedding(padding_idx), grouped Conv1d, GroupNorm, LeakyReLU, ELU,
    AvgPool1d, an LSTM given its initial state, ConvTranspose1d, LayerNorm without affine."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.emb = nn.Embedding(10, 4, padding_idx=0)
        self.conv = nn.Conv1d(4, 6, 3, padding=1, groups=2)
        self.gn = nn.GroupNorm(2, 6)
        self.act = nn.LeakyReLU(0.2)
        self.elu = nn.ELU(0.5)
        self.pool = nn.AvgPool1d(2)
        self.lstm = nn.LSTM(6, 5, batch_first=True)
        self.up = nn.ConvTranspose1d(5, 3, 2, stride=2)
        self.ln = nn.LayerNorm([3, 4], elementwise_affine=False)

    def forward(self, idx, h0, c0):
        x = self.emb(idx).transpose(1, 2)
        x = self.pool(self.elu(self.act(self.gn(self.conv(x)))))
        out, (h, c) = self.lstm(x.transpose(1, 2), (h0, c0))
        return self.ln(self.up(out.transpose(1, 2))[..., :4]), h, c


class _Norms(torch.nn.Module):
    """Normalization layers away from their defaults: eps, momentum, no affine."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.2)
        self.bn2 = nn.BatchNorm2d(4, momentum=0.3, affine=False)
        self.gn = nn.GroupNorm(2, 4, eps=1e-4)
        self.ln = nn.LayerNorm(8, eps=1e-6)

    def forward(self, x):
        return self.ln(self.gn(self.bn2(self.bn(x))))


class _TrainMode(torch.nn.Module):
    """Exported in train mode: batch statistics, running-stat updates, dropout."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, x):
        return self.drop(torch.relu(self.bn(self.conv(x))))


_EXPORTED = {
    "nested_cond": (lambda: _NestedCond(), lambda: (torch.randn(4).abs() + 0.5,)),
    "more_layers": (
        lambda: _MoreLayers().eval(),
        lambda: (torch.randint(0, 10, (2, 8)), torch.randn(1, 2, 5), torch.randn(1, 2, 5)),
    ),
    "train_mode": (lambda: _TrainMode().train(), lambda: (torch.randn(2, 3, 8, 8),)),
    "norms": (lambda: _Norms().eval(), lambda: (torch.randn(2, 4, 8, 8),)),
}


@pytest.mark.parametrize("ir", ["training", "core"])
@pytest.mark.parametrize("name", sorted(_EXPORTED))
def test_models_exported_here(tmp_path, name, ir):
    make_module, make_inputs = _EXPORTED[name]
    torch.manual_seed(0)
    args = make_inputs()
    ep = export_or_skip(make_module(), args)
    path = tmp_path / f"{name}.pt2"
    torch.export.save(ep if ir == "training" else ep.run_decompositions(), path)
    source = to_python(path)
    namespace, _ = build(source)
    model = namespace["from_pt2"](path)
    assert model.training == (name == "train_mode")
    reference = pt2interp.load(path, inference_mode=False)
    inputs = [args] + ([tuple(-a for a in args)] if name == "nested_cond" else [])
    for call_args in inputs:
        for _ in range(2):  # the train-mode model updates its running statistics
            torch.manual_seed(1)
            got = _detach(flatten_outputs(model(*call_args)))
            torch.manual_seed(1)
            want = _detach(flatten_outputs(reference(*call_args)))
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    if name == "more_layers":
        for layer in (
            "nn.Embedding(10, 4, padding_idx=0)",
            "nn.Conv1d(4, 6, 3, padding=1, groups=2)",
            "nn.GroupNorm(2, 6)",
            "nn.LSTM(6, 5, batch_first=True)",
            "self.lstm(",
            "nn.ConvTranspose1d(5, 3, 2, stride=2)",
        ):
            assert layer in source or ir == "core", layer
    if name == "norms":
        for layer in (
            "nn.BatchNorm2d(4, eps=0.001, momentum=0.2)",
            "nn.BatchNorm2d(4, momentum=0.3, affine=False)",
            "nn.GroupNorm(2, 4, eps=0.0001)",
            "nn.LayerNorm(8, eps=1e-06)",
        ):
            assert layer in source, layer


def test_cli_writes_source_and_weights(tmp_path):
    from pt2interp.cli import main

    c = case("zoo", "mini_gpt")
    out, weights = tmp_path / "gpt.py", tmp_path / "gpt.safetensors"
    assert (
        main(
            [
                "codegen",
                str(c.path),
                "-o",
                str(out),
                "--weights",
                str(weights),
                "--class-name",
                "MiniGPT",
                "--no-comments",
            ]
        )
        == 0
    )
    namespace, _ = build(out.read_text(), "MiniGPT")
    model = namespace["load_safetensors"](str(weights))
    assert model.head.weight is model.tok_emb.weight
    (idx,), _ = c.inputs()
    want = pt2interp.load(c.path, inference_mode=False)(idx)
    torch.testing.assert_close(model(idx).detach(), want.detach(), rtol=0, atol=0)
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        written = set(f.keys())
    assert "head.weight" not in written and "tok_emb.weight" in written  # tied: written once


# -- names from the archive never become code --------------------------------------------------

HOSTILE = [
    "x; import os",
    "__import__('os').system('echo')",
    '"""',
    "a\nb",
    "\u00fcn\u00ef\u202e",
    "class",
    "0",
    "self",
    "\\",
    "'",
    "l",
    "forward_",
    "x = 1  # ",
    "${x}",
    "\x00",
]
_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
)
hostile_text = st.one_of(st.sampled_from(HOSTILE), _text)
# attribute names torch itself can register: not empty, no ".", not an nn.Module attribute
attribute_text = hostile_text.filter(lambda s: "." not in s and not hasattr(torch.nn.Module(), s))


def _hostile_archive(
    dst: Path, values: dict, params: dict, out_key: str, class_name: str, trace: str
) -> Path:
    """The zoo multi_io archive with hostile value, parameter, output-key and class names."""
    src = case("zoo", "multi_io").path
    top = src.stem
    with zipfile.ZipFile(src) as z:
        model = json.loads(z.read(f"{top}/models/model.json"))
        config = json.loads(z.read(f"{top}/data/weights/model_weights_config.json"))

    def walk(o):
        if isinstance(o, dict):
            return {
                k: (
                    values.get(v, v)
                    if k == "name" and isinstance(v, str)
                    else params.get(v, v)
                    if k == "parameter_name"
                    else walk(v)
                )
                for k, v in o.items()
            }
        return [walk(x) for x in o] if isinstance(o, list) else o

    model = walk(model)
    graph = model["graph_module"]["graph"]
    graph["tensor_values"] = {values.get(k, k): v for k, v in graph["tensor_values"].items()}
    for node in graph["nodes"]:
        meta = node["metadata"]
        meta["stack_trace"] = trace
        meta["nn_module_stack"] = meta["nn_module_stack"].replace("MultiIO", class_name)
    signature = model["graph_module"]["module_call_graph"][0]["signature"]
    out_spec = json.loads(signature["out_spec"])
    out_spec[1]["context"] = json.dumps([out_key, "pair", "cat"])
    signature["out_spec"] = json.dumps(out_spec)
    config["config"] = {params.get(k, k): v for k, v in config["config"].items()}
    return rewrite_zip(
        src,
        dst,
        replace={
            f"{top}/models/model.json": json.dumps(model).encode(),
            f"{top}/data/weights/model_weights_config.json": json.dumps(config).encode(),
        },
    )


def _code_without_strings(source: str) -> str:
    """The source with string literals and comments cut out."""
    kept = [
        t.string
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type not in (tokenize.STRING, tokenize.COMMENT)
    ]
    return " ".join(kept)


_MULTI_IO_NAMES = {
    "a",
    "b",
    "mask",
    "scale",
    "linear",
    "mul",
    "sum_1",
    "sum_2",
    "add",
    "full_like",
    "where",
    "getitem",
    "getitem_1",
    "cat",
    "p_proj_weight",
    "p_proj_bias",
}
_ALLOWED_IMPORTS = {
    "math",
    "operator",
    "collections",
    "torch",
    "torch.nn.functional",
    "pt2interp",
    "safetensors.torch",
}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(hostile_text, min_size=9, max_size=9, unique=True),
    module=attribute_text,
    weight=attribute_text,
    bias=attribute_text,
    out_key=hostile_text,
    class_name=hostile_text.filter(lambda s: "," not in s and ";" not in s),
    trace=hostile_text,
)
def test_hostile_names_never_become_code(
    tmp_path, values, module, weight, bias, out_key, class_name, trace
):
    assume(weight != bias and out_key not in ("pair", "cat") and not set(values) & _MULTI_IO_NAMES)
    names = ["a", "linear", "mul", "sum_1", "add", "getitem", "cat", "p_proj_weight", "full_like"]
    path = _hostile_archive(
        tmp_path / f"h{abs(hash((module, weight, bias)))}.pt2",
        dict(zip(names, values)),
        {"proj.weight": f"{module}.{weight}", "proj.bias": f"{module}.{bias}"},
        out_key,
        class_name,
        f'File "x.py", line 1, in forward\n    {trace}',
    )
    source = to_python(path)
    tree = ast.parse(source)  # it compiles
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = {a.name for a in node.names} if isinstance(node, ast.Import) else {node.module}
            assert mods <= _ALLOWED_IMPORTS, mods
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in ("eval", "exec", "__import__", "compile", "open")
    code = _code_without_strings(source)
    for raw in [*values, module, weight, bias, out_key, class_name, trace]:
        # Code needs a name (a letter) and punctuation to do anything. Text with no letter or no
        # punctuation is common in generated code (`code` joins tokens with spaces, so " 10" is
        # in "- 10000.0" and "0.0" in "10000.0"); spaced names alone are left to the AST checks
        # above (an `import os` would show there).
        solid = "".join(raw.split())
        punctuated = any(not (ch.isascii() and (ch.isalnum() or ch == "_")) for ch in solid)
        if len(raw) >= 3 and punctuated and any(ch.isalpha() or ch == "_" for ch in solid):
            assert raw not in code, raw  # only ever inside string literals or comments
        if "\n" in raw and len(raw.strip()) >= 2:
            assert raw not in source, raw
    # and it still runs, equal to the interpreter
    namespace, _ = build(source)
    model = namespace["from_pt2"](path)
    assert f"{module}.{weight}" in model.state_dict()
    args, kwargs = case("zoo", "multi_io").inputs()
    got = _detach(flatten_outputs(model(*args, **kwargs)))
    want = _detach(flatten_outputs(pt2interp.load(path, inference_mode=False)(*args, **kwargs)))
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


@given(hostile_text)
def test_sanitizers(raw):
    name = identifier(raw)
    assert name.isidentifier() and name.isascii() and not name.startswith("__")
    assert ast.literal_eval(string_literal(raw)) == raw and string_literal(raw).isascii()
    line = comment(raw)
    assert "\n" not in line and "\r" not in line and line.isascii() and len(line) <= 100


# -- the layout matches ruff format ------------------------------------------------------------

# The statement shapes the emitter writes: calls on names, attributes and literals, list and
# dict displays, binary operators on simple operands, subscripts, tuple targets and returns;
# names up to the 60 characters the sanitizer allows.
_name = st.from_regex(r"[a-z_][a-z0-9_]{0,59}", fullmatch=True).filter(
    lambda s: s.isidentifier() and not __import__("keyword").iskeyword(s)
)
_literal = st.one_of(
    st.integers(-3, 300).map(str),
    st.floats(-10, 10, allow_nan=False).map(repr),
    st.text(max_size=40).map(string_literal),
    st.sampled_from(["None", "True", "math.inf"]),
)
_simple = st.one_of(
    _name,
    _literal,
    _name.map(lambda n: f"self.{n}.weight"),
    st.text(min_size=1, max_size=50).map(lambda t: f"getattr(self, {string_literal(t)})"),
)
_display = st.one_of(
    st.lists(_simple, min_size=1, max_size=6).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.lists(st.tuples(st.text(max_size=20), _simple), min_size=1, max_size=4).map(
        lambda kv: "{" + ", ".join(f"{string_literal(k)}: {v}" for k, v in kv) + "}"
    ),
)
_argument = st.one_of(_simple, _display)
_call = st.tuples(
    st.sampled_from(
        [
            "torch.cat",
            "F.conv2d",
            "torch.ops.aten._native_batch_norm_legit.default",
            "x.view",
            "self.layer1[0]",
            'getattr(self, "0")',
        ]
    ),
    st.lists(_argument, max_size=7),
    st.lists(st.tuples(_name, _argument), max_size=3),
).map(lambda t: f"{t[0]}({', '.join(t[1] + [f'{k}={v}' for k, v in t[2]])})")
_expr = st.one_of(
    _call,
    _display,
    _simple,
    st.tuples(_simple, st.sampled_from(["+", "-", "*", "/", "**", "@", ">", "=="]), _simple).map(
        " ".join
    ),
    st.tuples(_name, _simple).map(lambda t: f"{t[0]}[{t[1]}:]"),
    st.tuples(_name, _simple).map(lambda t: f"{t[0]}[:, {t[1]}]"),
    _call.map(lambda c: f"{c}[0]"),
)
_statement = st.one_of(
    st.tuples(st.lists(_name, min_size=1, max_size=3), _expr).map(
        lambda t: f"{', '.join(t[0])} = {t[1]}"
    ),
    _call,
    _expr.map(lambda e: f"return {e}"),
    st.lists(_simple, min_size=2, max_size=5).map(lambda es: "return " + ", ".join(es)),
)


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed")
@settings(max_examples=30, deadline=None, derandomize=True)  # fixed examples: CI stays stable
@given(st.lists(_statement, min_size=1, max_size=12), st.integers(1, 3))
def test_printer_writes_what_ruff_format_writes(statements, depth):
    lines = []
    for i in range(depth):
        lines.append(" " * 4 * i + "def f():")
    lines += [printer.format_statement(s, 4 * depth) for s in statements]
    source = "\n".join(lines) + "\n"
    ast.parse(source)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "layout.py"
        f.write_text(source)
        result = subprocess.run(
            [RUFF, "format", "--isolated", "--no-cache", "--diff", str(f)],
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 0, result.stdout


def test_printer_examples():
    assert printer.format_statement("y = x ** 2 + x[a.b:]", 0) == "y = x**2 + x[a.b :]"
    assert printer.format_statement("y = 'it'", 0) == 'y = "it"'
    assert printer.constant_text(math.inf) == "math.inf"


def test_real_dunder_ops_are_written_and_fake_ones_refused(tmp_path):
    """aten.__and__.Scalar and the other dunder ops are real ATen ops; a dunder name torch's
    registry lacks is still refused."""

    class Bits(torch.nn.Module):
        def forward(self, x):
            return (x & 3) | (x >> 1) ^ (x << 2)

    path = tmp_path / "bits.pt2"
    torch.export.save(export_or_skip(Bits(), (torch.arange(8),)), path)
    source = to_python(path)
    assert "torch.ops.aten.__and__.Scalar(" in source
    namespace, _ = build(source)
    x = torch.arange(8) * 37
    assert torch.equal(namespace["from_pt2"](path)(x), pt2interp.load(path)(x))
    from pt2interp.codegen.statements import op_reference

    for fake in ("torch.ops.aten.__class__.default", "torch.ops.aten.__import__.default"):
        with pytest.raises(pt2interp.UnsupportedOpError):
            op_reference(fake)
