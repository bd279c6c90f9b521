"""The op registry against eager torch.

Every entry with a sample runs twice: through its kernel (or the ``torch.ops`` overload) and
through its rendering, evaluated as Python. The two must agree exactly: values, dtypes,
container types (list vs tuple), in-place effects on the inputs, and which outputs alias
which inputs.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import pt2interp.ops  # noqa: F401  (registers every family)
from pt2interp.codegen.printer import constant_text
from pt2interp.errors import UnsupportedOpError
from pt2interp.ops.registry import REGISTRY, Call, OpEntry, resolve_torch_op

BASELINE = Path(__file__).parent / "data" / "OPS-BASELINE.md"

# Outputs read from uninitialized memory: only shape and dtype mean anything.
UNINITIALIZED = {
    "aten.empty.memory_format",
    "aten.empty_like.default",
    "aten.empty_strided.default",
    "aten.new_empty.default",
}
# Random outputs. Both runs start from the same global seed and draw through the same
# overload (F.dropout calls aten.dropout), so they still agree exactly.
SEEDED = {
    "aten.dropout.default",
    "aten.dropout_.default",
    "aten.native_dropout.default",
    "aten.feature_dropout.default",
}
# Entries without a sample, by target prefix, and why.
NO_SAMPLE = {
    "_operator.": "Python operators on sym ints; the kernel is the operator itself",
    "math.": "math functions on sym ints; the kernel is the math function itself",
    "torch.sym_": "sym-int helpers; the kernel is the torch function itself",
    "torch._sym_sqrt": "sym-int helper; the kernel is the torch function itself",
    "torch.fx.experimental.symbolic_shapes.cast_symbool_to_symint_guardless": (
        "a bool size condition as an int; tested in tests/test_symbolic_ops.py"
    ),
    "higher_order.while_loop": "takes subgraph callables; tested by the interpreter fixtures",
    "higher_order.map_impl": "takes subgraph callables; tested by the interpreter fixtures",
    "higher_order.with_effects": "wraps another op with effect tokens; tested by fixtures",
    "higher_order.auto_functionalized": "wraps a mutating custom op; tested by fixtures",
    "higher_order.print": "prints; tested in tests/test_hostile_ops.py",
    "higher_order.scan": "torch's own kernel runs it; tested in tests/test_codegen_higher_order.py",
    "higher_order.associative_scan": (
        "torch's own kernel runs it; tested in tests/test_codegen_higher_order.py"
    ),
    "higher_order.tag_activation_checkpoint": (
        "runs its body; tested in tests/test_codegen_higher_order.py"
    ),
    "higher_order.wrap": "runs its body; tested in tests/test_codegen_higher_order.py",
    "higher_order.invoke_subgraph": "runs its body; tested in tests/test_codegen_higher_order.py",
    "higher_order.hints_wrapper": "runs its body; tested in tests/test_codegen_higher_order.py",
    "higher_order.wrap_with_": (
        "runs its body in a grad or autocast mode; tested in tests/test_codegen_higher_order.py"
    ),
    "torch._functorch.predispatch.": (
        "functorch transform state; tested in tests/test_functorch_calls.py"
    ),
    "aten._scaled_dot_product_efficient_attention": (
        "CUDA-only op; its stand-in elsewhere: tests/test_devices.py"
    ),
    "aten._scaled_dot_product_flash_attention.": (
        "CUDA-only op; its stand-in elsewhere: tests/test_devices.py"
    ),
    "aten._scaled_dot_product_cudnn_attention": (
        "CUDA-only op; its stand-in elsewhere: tests/test_devices.py"
    ),
}
NAMESPACE = {"torch": torch, "F": F, "math": math, "operator": operator}


def _baseline_targets() -> list[str]:
    return re.findall(r"^(aten\.[\w.]+)\s+\(", BASELINE.read_text(), flags=re.MULTILINE)


# -- running an entry ----------------------------------------------------------------------


def _overload(target: str):
    """The torch.ops object of a registry key, dunder names included (the interpreter's
    resolver refuses those; entries for them carry a kernel)."""
    namespace, name, *overload = target.split(".")
    packet = getattr(getattr(torch.ops, namespace), name)
    return getattr(packet, overload[0]) if overload else packet


def _kernel(entry: OpEntry):
    return entry.kernel or resolve_torch_op("torch.ops." + entry.target)


def _schema_names(entry: OpEntry) -> list[str] | None:
    op = _overload(entry.target) if entry.target.startswith("aten.") else None
    return [a.name for a in op._schema.arguments] if op is not None else None


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _literal(value) -> str | None:
    """Python source for a non-tensor value, or None when it has none; spelled the way
    codegen writes constants (its ``constant_text``; devices as strings)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return constant_text(value)
    if isinstance(value, (torch.dtype, torch.memory_format, torch.layout)):
        return repr(value)
    if isinstance(value, torch.device):
        return constant_text(str(value))
    if isinstance(value, (list, tuple)):
        items = [_literal(v) for v in value]
        if any(i is None for i in items):
            return None
        return f"[{', '.join(items)}]" if isinstance(value, list) else f"({', '.join(items)},)"
    return None


def _source(value, name: str, scope: dict, literal: bool) -> str:
    """Bind ``value`` in ``scope`` and return the text that reads it back.

    ``literal``: scalars (and lists of them) as literals, lists holding tensors as list
    displays of variables, the way generated code writes them. Otherwise one variable.
    """
    if literal:
        text = _literal(value)
        if text is not None:
            return text
        if isinstance(value, (list, tuple)):
            items = [_source(v, f"{name}_{i}", scope, literal) for i, v in enumerate(value)]
            return f"[{', '.join(items)}]"
    scope[name] = value
    return name


def _bind(entry: OpEntry, args, kwargs, literal: bool) -> tuple[Call, dict]:
    names = _schema_names(entry)
    scope: dict = {}
    call_args: dict[str, str] = {}
    positional = []
    for i, value in enumerate(args):
        text = _source(value, f"a{i}", scope, literal)
        positional.append(text)
        if names is not None:
            call_args[names[i]] = text
    for key, value in kwargs.items():
        call_args[key] = _source(value, f"k_{key}", scope, literal)
    return Call(entry.target, call_args, positional, frozenset(kwargs)), scope


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _aliasing(result, inputs) -> set[tuple[int, int]]:
    """Pairs (output i, input j) sharing storage; identity pairs marked with -1 - j."""
    pairs = set()
    for i, out in enumerate(_tensors(result)):
        for j, inp in enumerate(_tensors(inputs)):
            if out is inp:
                pairs.add((i, -1 - j))
            if (
                out.untyped_storage().nbytes()
                and inp.untyped_storage().nbytes()
                and (out.untyped_storage().data_ptr() == inp.untyped_storage().data_ptr())
            ):
                pairs.add((i, j))
    return pairs


def assert_same(actual, expected, exact: bool = True, where: str = "result") -> None:
    """Exact equality (NaNs equal), same dtype/shape/device, same container kinds."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: {type(actual).__name__}, not a tensor"
        assert (actual.dtype, actual.shape, actual.device) == (
            expected.dtype,
            expected.shape,
            expected.device,
        ), f"{where}: {actual.dtype}{list(actual.shape)} != {expected.dtype}{list(expected.shape)}"
        if exact:
            torch.testing.assert_close(
                actual, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{where}: {m}"
            )
    elif isinstance(expected, (list, tuple)):
        kind = list if isinstance(expected, list) else tuple
        assert isinstance(actual, kind) and (kind is tuple) != isinstance(actual, list), (
            f"{where}: {type(actual).__name__}, expected {kind.__name__}"
        )
        assert len(actual) == len(expected), f"{where}: {len(actual)} items != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, exact, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (
            f"{where}: keys differ"
        )
        for key in expected:
            assert_same(actual[key], expected[key], exact, f"{where}[{key!r}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), f"{where}: {actual!r} != nan"
    else:
        assert type(actual) is type(expected) and actual == expected, (
            f"{where}: {actual!r} != {expected!r}"
        )


def check_entry(entry: OpEntry, args, kwargs, literal: bool) -> str:
    """Run ``entry`` on a sample both ways and compare; returns the rendered source."""
    exact = entry.target not in UNINITIALIZED
    kernel_inputs = (_clone(args), _clone(kwargs))
    torch.manual_seed(0)
    expected = _kernel(entry)(*kernel_inputs[0], **kernel_inputs[1])

    render_inputs = (_clone(args), _clone(kwargs))
    call, scope = _bind(entry, *render_inputs, literal=literal)
    source = entry.render(call)
    torch.manual_seed(0)
    actual = eval(compile(source, f"<render {entry.target}>", "eval"), {**NAMESPACE, **scope})

    where = f"{entry.target} rendered as {source!r}"
    assert_same(actual, expected, exact, where)
    # In-place effects: every input ends the same both ways.
    assert_same(render_inputs, kernel_inputs, exact, f"{where}: inputs after the call")
    assert _aliasing(actual, render_inputs) == _aliasing(expected, kernel_inputs), (
        f"{where}: outputs alias different inputs"
    )
    return source


# -- tests ---------------------------------------------------------------------------------


def test_baseline_registered():
    targets = _baseline_targets()
    assert len(targets) == 142, "OPS-BASELINE.md lists 142 ops"
    missing = [t for t in targets if t not in REGISTRY]
    assert not missing, f"baseline ops without an entry: {missing}"
    no_render = [t for t in targets if REGISTRY[t].render is None]
    assert not no_render, f"baseline ops without a renderer: {no_render}"


def test_registered_targets_exist():
    """Every aten entry names an overload this torch has (nothing registered speculatively)."""
    missing = []
    for target in REGISTRY:
        if target.startswith("aten."):
            try:
                _overload(target)
            except (AttributeError, RuntimeError):
                missing.append(target)
    assert not missing


def test_every_registered_aten_target_resolves_from_a_file_string():
    """The interpreter's resolver finds every registered op, dunder names included."""
    unresolved = []
    for target in REGISTRY:
        if target.startswith("aten."):
            try:
                resolve_torch_op("torch.ops." + target)
            except UnsupportedOpError:
                unresolved.append(target)
    assert not unresolved


@pytest.mark.parametrize(
    "target",
    [
        "torch.ops.aten.__class__",
        "torch.ops.aten.__dict__.x",
        "torch.ops.__builtins__.x.y",
        "torch.ops.aten.add.__call__",
    ],
)
def test_dunder_attributes_are_not_ops(target):
    with pytest.raises(UnsupportedOpError):
        resolve_torch_op(target)


def test_every_registered_op_has_sample_or_reason():
    unexplained = [
        t
        for t, e in REGISTRY.items()
        if e.sample is None and not any(t.startswith(p) for p in NO_SAMPLE)
    ]
    assert not unexplained, f"entries with neither a sample nor a reason: {unexplained}"
    # The allow-list stays honest: each prefix still matches an entry without a sample.
    stale = [
        p
        for p in NO_SAMPLE
        if not any(t.startswith(p) and e.sample is None for t, e in REGISTRY.items())
    ]
    assert not stale, f"allow-list prefixes matching nothing: {stale}"


def test_families_are_the_documented_modules():
    families = {e.family for e in REGISTRY.values()}
    assert families <= {
        "elementwise",
        "shape",
        "nn",
        "reduction",
        "indexing",
        "factory",
        "higher_order",
        "symbolic",
        "functorch",
    }, families


SAMPLED = sorted(t for t, e in REGISTRY.items() if e.sample is not None)


def _skip_if_older_schema(target: str, args, kwargs) -> None:
    """Samples are written for the newest torch; an older one may lack an argument."""
    if not target.startswith("aten."):
        return
    arguments = _overload(target)._schema.arguments
    extra = sorted(set(kwargs) - {a.name for a in arguments})
    if extra or len(args) > len(arguments):
        pytest.skip(
            f"{target} in torch {torch.__version__} takes no "
            f"{extra or f'{len(args)} positional arguments'}"
        )


@pytest.mark.parametrize("target", SAMPLED)
def test_entry_matches_eager(target):
    entry = REGISTRY[target]
    args, kwargs = entry.sample(torch.Generator().manual_seed(0))
    _skip_if_older_schema(target, args, kwargs)
    check_entry(entry, args, kwargs, literal=False)
    check_entry(entry, args, kwargs, literal=True)


def _without_one_default(target: str, args, kwargs):
    """Variants of a sample with one defaulted argument left out, later positionals passed
    by name: how nodes arrive when export drops an argument equal to its default. Renderers
    must then switch to keywords with the *Python* function's parameter names."""
    schema = _overload(target)._schema.arguments
    for i, arg in enumerate(schema):
        given = arg.name in kwargs if arg.kwarg_only else i < len(args)
        if not arg.has_default_value() or not given:
            continue
        named = {schema[j].name: v for j, v in enumerate(args) if j > i}
        named.update({k: v for k, v in kwargs.items() if k != arg.name})
        yield arg.name, tuple(args[:i]), named


@pytest.mark.parametrize("target", [t for t in SAMPLED if t.startswith("aten.")])
def test_entry_keyword_forms_match_eager(target):
    entry = REGISTRY[target]
    args, kwargs = entry.sample(torch.Generator().manual_seed(0))
    _skip_if_older_schema(target, args, kwargs)
    for _dropped, variant_args, variant_kwargs in _without_one_default(target, args, kwargs):
        try:  # some samples only make sense with the argument given (a `src` shaped for it)
            _kernel(entry)(*_clone(variant_args), **_clone(variant_kwargs))
        except (RuntimeError, ValueError, TypeError, IndexError):
            continue
        check_entry(entry, variant_args, variant_kwargs, literal=False)
        check_entry(entry, variant_args, variant_kwargs, literal=True)


def test_entries_render_readable_python():
    """A few renderings spelled out: what codegen users will read."""

    def render(target, **args):
        return REGISTRY[target].render(Call(target, args))

    assert render("aten.add.Tensor", self="x", other="y") == "x + y"
    assert render("aten.add.Tensor", self="x", other="y", alpha="2") == "torch.add(x, y, alpha=2)"
    assert render("aten.linear.default", input="x", weight="w", bias="b") == "F.linear(x, w, b)"
    assert render("aten.view.default", self="x", size="[2, -1]") == "x.view([2, -1])"
    assert render("aten.relu.default", self="x") == "F.relu(x)"
    assert render("aten.relu_.default", self="x") == "F.relu(x, inplace=True)"
    assert render("aten.cat.default", tensors="[a, b]", dim="1") == "torch.cat([a, b], 1)"
    assert render("aten.cat.default", tensors="[a, b]", dim="0") == "torch.cat([a, b])"
    assert (
        render("aten.slice.Tensor", self="x", dim="1", start="0", end="9223372036854775807")
        == "x[:, :]"
    )
    assert render("aten.slice.Tensor", self="x", dim="-1", start="2") == "x[..., 2:]"
    assert render("aten.select.int", self="x", dim="0", index="-1") == "x[-1]"
    assert render("aten.index.Tensor", self="x", indices="[None, i]") == "x[:, i]"
    assert render("aten.pow.Scalar", self="-2", exponent="x") == "(-2) ** x"
    assert (
        render(
            "aten.max_pool2d.default",
            self="x",
            kernel_size="[3, 3]",
            stride="[2, 2]",
            padding="[1, 1]",
        )
        == "F.max_pool2d(x, [3, 3], [2, 2], [1, 1])"
    )
    assert (
        render("aten.max_pool2d.default", self="x", kernel_size="[2, 2]", padding="[1, 1]")
        == "F.max_pool2d(x, [2, 2], padding=[1, 1])"
    )
    conv = {
        "input": "x",
        "weight": "w",
        "bias": "None",
        "stride": "[1, 1]",
        "padding": "[0, 0]",
        "dilation": "[1, 1]",
        "output_padding": "[0, 0]",
        "groups": "1",
    }
    assert render("aten.convolution.default", transposed="False", **conv) == "F.conv2d(x, w)"
    assert (
        render("aten.convolution.default", transposed="True", **conv) == "F.conv_transpose2d(x, w)"
    )
    assert render("aten.convolution.default", transposed="t", **conv).startswith(
        "torch.ops.aten.convolution.default("
    )
    assert render("aten.split.Tensor", self="x", split_size="2") == "list(torch.split(x, 2))"


# Extra samples for rendering branches the registry's one sample per entry does not reach.
EXTRA_CASES = [
    (
        "aten.convolution.default",
        lambda g: (
            (
                torch.randn(1, 2, 5, generator=g),
                torch.randn(2, 3, 3, generator=g),
                None,
                [2],
                [1],
                [1],
                True,
                [1],
                1,
            ),
            {},
        ),
    ),
    (
        "aten.convolution.default",
        lambda g: (
            (
                torch.randn(1, 2, 4, 4, 4, generator=g),
                torch.randn(3, 2, 1, 2, 2, generator=g),
                torch.randn(3, generator=g),
                [1, 1, 1],
                [0, 0, 0],
                [1, 2, 1],
                False,
                [0, 0, 0],
                1,
            ),
            {},
        ),
    ),
    (
        "aten._adaptive_avg_pool2d.default",
        lambda g: ((torch.randn(2, 3, 7, 5, generator=g), [1, 1]), {}),
    ),
    ("aten.add.Tensor", lambda g: ((torch.randn(3, generator=g), 2.5), {"alpha": -1.5})),
    ("aten.elu.default", lambda g: ((torch.randn(4, generator=g), 1.0, 2.0, 0.5), {})),
    ("aten.slice.Tensor", lambda g: ((torch.randn(3, 6, generator=g), -1, -4, 2**63 - 1), {})),
    ("aten.select.int", lambda g: ((torch.randn(3, 6, generator=g), 1, -1), {})),
    (
        "aten.index.Tensor",
        lambda g: (
            (torch.randn(3, 4, generator=g), [torch.tensor([[0, 2]]), torch.tensor([1, 3])]),
            {},
        ),
    ),
    (
        "aten.index.Tensor",
        lambda g: ((torch.randn(3, 4, generator=g), [torch.rand(3, generator=g) > 0.5]), {}),
    ),
    (
        "aten._log_softmax.default",
        lambda g: ((torch.randn(2, 3, generator=g).half(), 1, False), {}),
    ),
    (
        "aten._adaptive_avg_pool2d.default",
        lambda g: ((torch.randn(2, 3, 7, 5, generator=g), [3, 2]), {}),
    ),
    (
        "aten.upsample_nearest2d.default",
        lambda g: ((torch.randn(1, 1, 3, 3, generator=g), [7, 4], 2.5, 1.5), {}),
    ),
    (
        "aten.einsum.default",
        lambda g: (
            (
                "ij,jk,kl->il",
                [
                    torch.randn(2, 3, generator=g),
                    torch.randn(3, 4, generator=g),
                    torch.randn(4, 2, generator=g),
                ],
            ),
            {},
        ),
    ),
    ("aten._to_copy.default", lambda g: ((torch.randn(2, generator=g),), {})),
    ("aten._to_copy.default", lambda g: ((torch.randn(2, generator=g),), {"dtype": torch.float32})),
    ("aten.to.dtype", lambda g: ((torch.randn(2, generator=g), torch.float32), {})),
    (
        "aten.embedding.default",
        lambda g: ((torch.randn(4, 2, generator=g), torch.tensor([[0, 3], [1, 1]]), -1), {}),
    ),
    (
        "aten.batch_norm.default",
        lambda g: (
            (
                torch.randn(2, 3, generator=g),
                None,
                None,
                torch.zeros(3),
                torch.ones(3),
                False,
                0.1,
                1e-5,
                False,
            ),
            {},
        ),
    ),
    (
        "aten.scaled_dot_product_attention.default",
        lambda g: (
            (
                torch.randn(1, 2, 3, 4, generator=g),
                torch.randn(1, 2, 3, 4, generator=g),
                torch.randn(1, 2, 3, 4, generator=g),
                None,
                0.0,
                True,
            ),
            {},
        ),
    ),
    ("aten.norm.ScalarOpt_dim", lambda g: ((torch.randn(3, 4, generator=g), None, [0, 1]), {})),
    ("aten.sum.dim_IntList", lambda g: ((torch.randn(3, 4, generator=g), None), {})),
    (
        "aten.where.ScalarOther",
        lambda g: ((torch.rand(3, generator=g) > 0.5, torch.arange(3), math.inf), {}),
    ),
    ("aten.full.default", lambda g: (([2], math.nan), {"dtype": torch.float64})),
]


@pytest.mark.parametrize("target,make", EXTRA_CASES, ids=[t for t, _ in EXTRA_CASES])
def test_extra_cases_match_eager(target, make):
    args, kwargs = make(torch.Generator().manual_seed(1))
    check_entry(REGISTRY[target], args, kwargs, literal=False)
    check_entry(REGISTRY[target], args, kwargs, literal=True)


@pytest.mark.parametrize("target", sorted(SEEDED))
def test_seeded_entries_are_random(target):
    """The SEEDED marks are real: different seeds draw different outputs, so the exact match
    in test_entry_matches_eager comes from seeding both runs alike, not a constant output."""
    entry = REGISTRY[target]
    args, kwargs = entry.sample(torch.Generator().manual_seed(0))
    draws = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        draws.append(_tensors(_kernel(entry)(*_clone(args), **_clone(kwargs))))
    assert any(not torch.equal(a, b) for a, b in zip(*draws))


def test_dropout_training_renders_random_but_well_formed():
    """Unseeded training-mode dropout: values differ run to run; shape, dtype and the
    zero-or-scaled pattern do not."""
    x = torch.rand(64, 8) + 1.0
    source = REGISTRY["aten.dropout.default"].render(
        Call("aten.dropout.default", {"input": "x", "p": "0.25", "train": "True"})
    )
    out = eval(source, {**NAMESPACE, "x": x})
    assert_same(out, torch.ops.aten.dropout.default(x, 0.25, True), exact=False)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.75)


# -- property test: binary elementwise ops on random shapes and dtypes ---------------------

BINARY_TENSOR_TARGETS = [
    "aten.add.Tensor",
    "aten.sub.Tensor",
    "aten.mul.Tensor",
    "aten.div.Tensor",
    "aten.remainder.Tensor",
    "aten.floor_divide.default",
    "aten.pow.Tensor_Tensor",
    "aten.maximum.default",
    "aten.minimum.default",
    "aten.fmod.Tensor",
    "aten.rsub.Tensor",
    "aten.eq.Tensor",
    "aten.ne.Tensor",
    "aten.lt.Tensor",
    "aten.le.Tensor",
    "aten.gt.Tensor",
    "aten.ge.Tensor",
    "aten.bitwise_and.Tensor",
    "aten.bitwise_or.Tensor",
    "aten.bitwise_xor.Tensor",
    "aten.logical_and.default",
    "aten.div.Tensor_mode",
]
BINARY_SCALAR_TARGETS = [
    "aten.add.Scalar",
    "aten.sub.Scalar",
    "aten.mul.Scalar",
    "aten.div.Scalar",
    "aten.remainder.Scalar",
    "aten.pow.Tensor_Scalar",
    "aten.rsub.Scalar",
    "aten.fmod.Scalar",
    "aten.eq.Scalar",
    "aten.lt.Scalar",
    "aten.ge.Scalar",
    "aten.bitwise_and.Scalar",
]
DTYPES = [torch.float32, torch.float64, torch.int32, torch.int64, torch.bool, torch.uint8]


@st.composite
def broadcast_shapes(draw):
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    other = [draw(st.sampled_from([n, 1])) for n in shape][draw(st.integers(0, len(shape))) :]
    return tuple(shape), tuple(other)


def _make_tensor(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g, dtype=dtype) * 4
    low = 0 if dtype == torch.uint8 else -6
    return torch.randint(low, 7, shape, generator=g, dtype=dtype)


def _raises(fn) -> BaseException | None:
    """The exception ``fn()`` raises, or None. Invalid dtype mixes raise RuntimeError or
    TypeError depending on the spelling; only *whether* each side raises is compared."""
    try:
        fn()
    except (RuntimeError, TypeError, ValueError, ZeroDivisionError) as exc:
        return exc
    return None


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_binary_elementwise_match_eager(data):
    use_scalar = data.draw(st.booleans(), label="scalar other")
    target = data.draw(
        st.sampled_from(BINARY_SCALAR_TARGETS if use_scalar else BINARY_TENSOR_TARGETS),
        label="target",
    )
    shape, other_shape = data.draw(broadcast_shapes(), label="shapes")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    x = _make_tensor(shape, data.draw(st.sampled_from(DTYPES), label="dtype"), seed)
    if use_scalar:
        other = data.draw(
            st.one_of(st.integers(-5, 5), st.floats(-4, 4, allow_nan=False), st.booleans()),
            label="scalar",
        )
    else:
        other = _make_tensor(
            other_shape, data.draw(st.sampled_from(DTYPES), label="dtype2"), seed + 1
        )
    if data.draw(st.booleans(), label="swap") and not use_scalar:
        x, other = other, x
    kwargs = (
        {"rounding_mode": data.draw(st.sampled_from([None, "floor", "trunc"]))}
        if (target.endswith("_mode"))
        else {}
    )
    entry = REGISTRY[target]

    error = _raises(lambda: _kernel(entry)(x.clone(), _clone(other), **kwargs))
    for literal in (False, True):
        if error is None:
            check_entry(entry, (x, other), kwargs, literal)
            continue
        call, scope = _bind(entry, (x.clone(), _clone(other)), kwargs, literal)
        source = entry.render(call)
        rendered_error = _raises(functools.partial(eval, source, {**NAMESPACE, **scope}))
        assert rendered_error is not None, f"{source!r} succeeded where {target} raised {error!r}"
