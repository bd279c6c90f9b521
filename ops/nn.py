"""Neural-network ops: convolution, normalization, pooling, activations, attention,
matrix products, embedding, interpolation, padding, dropout and recurrent layers.

Renderings prefer ``torch.nn.functional`` (``F``) where the functional calls the same
overload with the same arguments. Where it does not (multi-output internals such as
``_native_batch_norm_legit_no_training``, or argument values the functional cannot pass) the
node reads as the public ``torch.<op>`` binding or the overload itself.
"""

from __future__ import annotations

import functools

from pt2interp.ops._render import (
    binding_renderer,
    call_renderer,
    infix_renderer,
    int_literal,
    is_default,
    positive,
    pycall,
    randbool,
    randint,
    randn,
    raw,
    sample,
    split_list,
    torch_attr,
    with_kw,
)
from pt2interp.ops.registry import Call
from pt2interp.ops.registry import register as _register

register = functools.partial(_register, family="nn")

_NONE = ("None",)
_FALSE = ("False",)


# -- convolution ---------------------------------------------------------------------------

_CONV = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
_CONV_TRANSPOSE = [
    "input",
    "weight",
    "bias",
    "stride",
    "padding",
    "output_padding",
    "groups",
    "dilation",
]


def _conv_sample(rank: int, transposed: bool = False):
    """Every argument away from its default (groups 2, stride 2, dilation 2, ...), so a
    renderer passing one in the wrong place fails its test."""
    if transposed:  # weight: (in, out / groups, *kernel); output_padding < stride
        return sample(
            randn(1, 4, *(4,) * rank),
            randn(4, 3, *(3,) * rank),
            randn(6),
            [2] * rank,
            [1] * rank,
            [1] * rank,
            2,
            [2] * rank,
        )
    return sample(
        randn(1, 4, *(7,) * rank),
        randn(6, 2, *(3,) * rank),
        randn(6),
        [2] * rank,
        [1] * rank,
        [2] * rank,
        2,
    )


for _rank in (1, 2, 3):
    _fn = f"F.conv{_rank}d"
    register(f"aten.conv{_rank}d.default", sample=_conv_sample(_rank))(call_renderer(_fn, _CONV))
    register(
        f"aten.conv{_rank}d.padding",
        sample=sample(
            randn(1, 2, *(5,) * _rank), randn(3, 2, *(3,) * _rank), None, [1] * _rank, "same"
        ),
    )(call_renderer(_fn, _CONV))
    _overload = "default" if _rank == 1 else "input"
    register(f"aten.conv_transpose{_rank}d.{_overload}", sample=_conv_sample(_rank, True))(
        call_renderer(f"F.conv_transpose{_rank}d", _CONV_TRANSPOSE)
    )


def _list_of(value: str, rank: int) -> tuple[str, ...]:
    return (f"[{', '.join([value] * rank)}]",)


@register(
    "aten.convolution.default",
    sample=sample(
        randn(2, 2, 6, 5), randn(4, 1, 3, 2), randn(4), [1, 2], [1, 0], [1, 1], False, [0, 0], 2
    ),
)
def _convolution(c: Call) -> str:
    """``F.conv2d`` / ``F.conv_transpose2d`` with the rank read off the ``stride`` list."""
    lengths = {
        len(items)
        for items in (split_list(c.get(n)) for n in ("stride", "padding", "dilation"))
        if items
    }
    transposed = c["transposed"].strip()
    rank = lengths.pop() if len(lengths) == 1 else None
    if rank not in (1, 2, 3) or transposed not in ("True", "False"):
        return raw(c)
    defaults = {
        "bias": _NONE,
        "stride": _list_of("1", rank),
        "padding": _list_of("0", rank),
        "dilation": _list_of("1", rank),
        "output_padding": _list_of("0", rank),
        "groups": ("1",),
    }
    if transposed == "True":
        return pycall(c, f"F.conv_transpose{rank}d", _CONV_TRANSPOSE, defaults=defaults)
    # A forward convolution ignores `output_padding` only when it is zero; anything else
    # keeps the overload so the node's meaning is not silently dropped.
    if not is_default(c, "output_padding", defaults):
        return raw(c)
    return pycall(c, f"F.conv{rank}d", _CONV, defaults=defaults)


# -- normalization -------------------------------------------------------------------------


def _bn_inputs(*shape):
    channels = shape[1]
    return [randn(*shape), randn(channels), randn(channels), randn(channels), positive(channels)]


@register("aten.batch_norm.default", sample=sample(*_bn_inputs(2, 3, 4), True, 0.1, 1e-5, True))
def _batch_norm(c: Call) -> str:
    # F.batch_norm orders running stats first; `cudnn_enabled` only picks a CUDA backend.
    return pycall(
        c,
        "F.batch_norm",
        ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"],
        defaults={
            "weight": _NONE,
            "bias": _NONE,
            "training": _FALSE,
            "momentum": ("0.1",),
            "eps": ("1e-05",),
        },
    )


# Multi-output batch-norm internals have no functional spelling: the overload itself.
register(
    "aten._native_batch_norm_legit_no_training.default",
    sample=sample(*_bn_inputs(2, 3, 4, 4), 0.1, 1e-5),
)(raw)
register(
    "aten._native_batch_norm_legit_functional.default",
    sample=sample(*_bn_inputs(2, 3, 4), True, 0.1, 1e-5),
)(raw)
register(
    "aten._native_batch_norm_legit.default", sample=sample(*_bn_inputs(2, 3, 4), True, 0.1, 1e-5)
)(raw)
register(
    "aten._native_batch_norm_legit.no_stats",
    sample=sample(randn(2, 3, 4), randn(3), randn(3), True, 0.1, 1e-5),
)(raw)
register("aten.native_batch_norm.default", sample=sample(*_bn_inputs(2, 3, 4), False, 0.1, 1e-5))(
    binding_renderer("torch.native_batch_norm")
)

register("aten.layer_norm.default", sample=sample(randn(2, 3, 4), [4], randn(4), randn(4)))(
    call_renderer("F.layer_norm", ["input", "normalized_shape", "weight", "bias", "eps"])
)
register(
    "aten.native_layer_norm.default", sample=sample(randn(2, 3, 4), [3, 4], randn(3, 4), None, 1e-5)
)(binding_renderer("torch.native_layer_norm"))
register("aten.group_norm.default", sample=sample(randn(2, 4, 3), 2, randn(4), randn(4)))(
    call_renderer("F.group_norm", ["input", "num_groups", "weight", "bias", "eps"])
)
register(
    "aten.native_group_norm.default",
    sample=sample(randn(2, 4, 3), randn(4), randn(4), 2, 4, 3, 2, 1e-5),
)(binding_renderer("torch.native_group_norm"))
register("aten.rms_norm.default", sample=sample(randn(2, 3, 4), [4], randn(4), 1e-6))(
    call_renderer("F.rms_norm", ["input", "normalized_shape", "weight", "eps"])
)


# -- pooling -------------------------------------------------------------------------------

_MAX_POOL = ["self:input", "kernel_size", "stride", "padding", "dilation"]
_AVG_POOL = ["self:input", "kernel_size", "stride", "padding"]
# Flags read best by name.
_MAX_POOL_FLAGS = ["ceil_mode"]
_AVG_POOL_FLAGS = ["ceil_mode", "count_include_pad", "divisor_override"]

for _rank in (1, 2, 3):
    _x = randn(1, 2, *(6, 5, 4)[:_rank])
    _max_sample = sample(_x, [3] * _rank, [2] * _rank, [1] * _rank, [2] * _rank, True)
    register(f"aten.max_pool{_rank}d.default", sample=_max_sample)(
        call_renderer(f"F.max_pool{_rank}d", _MAX_POOL, _MAX_POOL_FLAGS)
    )
    register(f"aten.max_pool{_rank}d_with_indices.default", sample=_max_sample)(
        call_renderer(
            f"F.max_pool{_rank}d", _MAX_POOL, _MAX_POOL_FLAGS, fixed=["return_indices=True"]
        )
    )
    register(
        f"aten.avg_pool{_rank}d.default",
        sample=sample(_x, [3] * _rank, [2] * _rank, [1] * _rank, True, False),
    )(call_renderer(f"F.avg_pool{_rank}d", _AVG_POOL, _AVG_POOL_FLAGS))
    register(f"aten.adaptive_avg_pool{_rank}d.default", sample=sample(_x, [3, 2, 1][:_rank]))(
        call_renderer(f"F.adaptive_avg_pool{_rank}d", ["self:input", "output_size"])
    )


def _adaptive_avg_pool_kernel(c: Call) -> str:
    """`_adaptive_avg_pool2d/3d`: the kernel under F.adaptive_avg_pool2d, except that for an
    all-ones output F.adaptive_avg_pool2d takes a mean instead (different rounding)."""
    sizes = split_list(c["output_size"])
    if sizes is None or all(s == "1" for s in sizes):
        return raw(c)
    return pycall(c, f"F.adaptive_avg_pool{len(sizes)}d", ["self:input", "output_size"])


register("aten._adaptive_avg_pool2d.default", sample=sample(randn(1, 2, 6, 5), [1, 1]))(
    _adaptive_avg_pool_kernel
)
register("aten._adaptive_avg_pool3d.default", sample=sample(randn(1, 2, 6, 5, 4), [3, 2, 1]))(
    _adaptive_avg_pool_kernel
)

for _rank in (1, 2):
    register(
        f"aten.adaptive_max_pool{_rank}d.default",
        sample=sample(randn(1, 2, *(6, 5)[:_rank]), [4, 2][:_rank]),
    )(
        call_renderer(
            f"F.adaptive_max_pool{_rank}d",
            ["self:input", "output_size"],
            fixed=["return_indices=True"],
        )
    )


# -- activations ---------------------------------------------------------------------------

# target op name → (functional, positional schema args after the input, sample extras).
_ACTIVATIONS = {
    "relu": ("F.relu", [], ()),
    "relu6": ("F.relu6", [], ()),
    "silu": ("F.silu", [], ()),
    "mish": ("F.mish", [], ()),
    "selu": ("F.selu", [], ()),
    "hardswish": ("F.hardswish", [], ()),
    "hardsigmoid": ("F.hardsigmoid", [], ()),
    "log_sigmoid": ("F.logsigmoid", [], ()),
    "hardtanh": ("F.hardtanh", ["min_val", "max_val"], (-0.5, 2)),
    "leaky_relu": ("F.leaky_relu", ["negative_slope"], (0.2,)),
    "elu": ("F.elu", ["alpha"], (0.5,)),
    "celu": ("F.celu", ["alpha"], (2.0,)),
    "softplus": ("F.softplus", ["beta", "threshold"], (2, 1)),
    "threshold": ("F.threshold", ["threshold", "value"], (0.1, -3.0)),
    "glu": ("F.glu", ["dim"], (0,)),
}
# In-place variants export keeps (`relu_` from `nn.ReLU(inplace=True)`).
_INPLACE = [
    "relu",
    "relu6",
    "silu",
    "mish",
    "selu",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "leaky_relu",
    "elu",
    "celu",
    "threshold",
]


def _activation(fn: str, params: list[str], inplace: bool):
    def render(c: Call) -> str:
        # F.elu has no `scale`/`input_scale`: other values keep the overload.
        if not (is_default(c, "scale") and is_default(c, "input_scale")):
            return raw(c)
        call = pycall(c, fn, ["self:input", *params])
        return with_kw(call, "inplace=True") if inplace else call

    return render


for _name, (_fn, _params, _extra) in _ACTIVATIONS.items():
    _x = randn(4, 6)
    register(f"aten.{_name}.default", sample=sample(_x, *_extra))(_activation(_fn, _params, False))
    if _name in _INPLACE:
        register(f"aten.{_name}_.default", sample=sample(_x, *_extra))(
            _activation(_fn, _params, True)
        )

register("aten.gelu.default", sample=sample(randn(4, 6), approximate="tanh"))(
    call_renderer("F.gelu", ["self:input"], ["approximate"])
)
register("aten.prelu.default", sample=sample(randn(2, 3, 4), randn(3)))(
    call_renderer("F.prelu", ["self:input", "weight"])
)


@register("aten.softmax.int", sample=sample(randn(2, 5), 1, torch_attr("float64")))
@register("aten.log_softmax.int", sample=sample(randn(2, 5), 0))
def _softmax(c: Call) -> str:
    fn = "F.log_softmax" if "log_softmax" in c.target else "F.softmax"
    # F.softmax's third positional is `_stacklevel`: dtype goes by keyword.
    return pycall(c, fn, ["self:input", "dim"], ["dtype"])


@register("aten._softmax.default", sample=sample(randn(2, 5), -1, False))
@register("aten._log_softmax.default", sample=sample(randn(2, 5), 1, False))
def _internal_softmax(c: Call) -> str:
    if c.get("half_to_float", "False").strip() != "False":
        return raw(c)
    fn = "F.log_softmax" if "log_softmax" in c.target else "F.softmax"
    return pycall(c, fn, ["self:input", "dim"])


# -- matrix products and attention ---------------------------------------------------------

register("aten.mm.default", sample=sample(randn(2, 3), randn(3, 4)))(
    call_renderer("torch.mm", ["self:input", "mat2"])
)
register("aten.bmm.default", sample=sample(randn(2, 2, 3), randn(2, 3, 4)))(
    call_renderer("torch.bmm", ["self:input", "mat2"])
)
register("aten.matmul.default", sample=sample(randn(2, 2, 3), randn(3, 4)))(infix_renderer("@"))
register("aten.dot.default", sample=sample(randn(5), randn(5)))(
    call_renderer("torch.dot", ["self:input", "tensor"])
)
register("aten.mv.default", sample=sample(randn(2, 3), randn(3)))(
    call_renderer("torch.mv", ["self:input", "vec"])
)
register("aten.linear.default", sample=sample(randn(2, 3), randn(4, 3), randn(4)))(
    call_renderer("F.linear", ["input", "weight", "bias"])
)

for _name, _args in {
    "addmm": (randn(4), randn(2, 3), randn(3, 4)),
    "baddbmm": (randn(2, 2, 4), randn(2, 2, 3), randn(2, 3, 4)),
    "addbmm": (randn(2, 4), randn(3, 2, 3), randn(3, 3, 4)),
}.items():
    _mats = {"addmm": ["mat1", "mat2"]}.get(_name, ["batch1", "batch2"])
    register(f"aten.{_name}.default", sample=sample(*_args, beta=0.5, alpha=2))(
        call_renderer(f"torch.{_name}", ["self:input", *_mats], ["beta", "alpha"])
    )


@register("aten.einsum.default", sample=sample("bij,bjk->bik", [randn(2, 3, 4), randn(2, 4, 5)]))
def _einsum(c: Call) -> str:
    # torch.einsum may reorder contractions of 3+ operands (opt_einsum) while the overload
    # contracts left to right, so only up to two operands read as torch.einsum.
    operands = split_list(c["tensors"])
    if operands is None or len(operands) > 2 or not is_default(c, "path"):
        return raw(c)
    return f"torch.einsum({c['equation']}, {', '.join(operands)})"


register(
    "aten.scaled_dot_product_attention.default",
    sample=sample(
        randn(1, 2, 3, 4), randn(1, 2, 3, 4), randn(1, 2, 3, 4), randbool(3, 3), scale=0.5
    ),
)(
    call_renderer(
        "F.scaled_dot_product_attention",
        ["query", "key", "value"],
        ["attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"],
    )
)


def _mha_weights(embed: int, ffn: int | None = None):
    weights = [randn(3 * embed, embed), randn(3 * embed), randn(embed, embed), randn(embed)]
    if ffn is None:
        return weights
    norms = [positive(embed), randn(embed), positive(embed), randn(embed)]
    ffns = [randn(ffn, embed), randn(ffn), randn(embed, ffn), randn(embed)]
    return weights, norms, ffns


_q = randn(2, 3, 4)
register(
    "aten._native_multi_head_attention.default", sample=sample(_q, _q, _q, 4, 2, *_mha_weights(4))
)(binding_renderer("torch._native_multi_head_attention"))
_attn, _norms, _ffns = _mha_weights(4, 8)
register(
    "aten._transformer_encoder_layer_fwd.default",
    sample=sample(randn(2, 3, 4), 4, 2, *_attn, False, True, 1e-5, *_norms, *_ffns),
)(binding_renderer("torch._transformer_encoder_layer_fwd"))


# -- recurrent layers: the functional forms nn.LSTM/GRU/RNN call ---------------------------


def _rnn_sample(gates: int, hidden_state):
    hidden, inputs = 5, 4
    params = [
        randn(gates * hidden, inputs),
        randn(gates * hidden, hidden),
        randn(gates * hidden),
        randn(gates * hidden),
    ]
    return sample(randn(3, 2, inputs), hidden_state, params, True, 1, 0.0, False, False, False)


register("aten.lstm.input", sample=_rnn_sample(4, [randn(1, 2, 5), randn(1, 2, 5)]))(
    binding_renderer("torch.lstm")
)
register("aten.gru.input", sample=_rnn_sample(3, randn(1, 2, 5)))(binding_renderer("torch.gru"))
register("aten.rnn_tanh.input", sample=_rnn_sample(1, randn(1, 2, 5)))(
    binding_renderer("torch.rnn_tanh")
)
register("aten.rnn_relu.input", sample=_rnn_sample(1, randn(1, 2, 5)))(
    binding_renderer("torch.rnn_relu")
)


# -- embedding, one_hot, pixel shuffle -----------------------------------------------------


@register("aten.embedding.default", sample=sample(randn(5, 3), randint(0, 5, 2, 4), 0))
def _embedding(c: Call) -> str:
    # F.embedding takes (indices, weight). The aten `padding_idx=-1` means "none" (F.embedding
    # would read -1 as the last row); padding only changes gradients, never the output.
    parts = [c["indices"], c["weight"]]
    padding = c.get("padding_idx")
    literal = int_literal(padding)
    if padding is not None and (literal is None or literal >= 0):
        parts.append(f"padding_idx={padding}")
    for name in ("scale_grad_by_freq", "sparse"):
        if not is_default(c, name):
            parts.append(f"{name}={c[name]}")
    return f"F.embedding({', '.join(parts)})"


register("aten.one_hot.default", sample=sample(randint(0, 4, 5), 6))(
    call_renderer("F.one_hot", ["self:tensor", "num_classes"])
)
register("aten.pixel_shuffle.default", sample=sample(randn(1, 8, 2, 3), 2))(
    call_renderer("F.pixel_shuffle", ["self:input", "upscale_factor"])
)
register("aten.pixel_unshuffle.default", sample=sample(randn(1, 2, 4, 6), 2))(
    call_renderer("F.pixel_unshuffle", ["self:input", "downscale_factor"])
)


# -- interpolation -------------------------------------------------------------------------

# `.vec` overloads are exactly what F.interpolate calls for its mode and input rank.
_INTERPOLATE_VEC = {
    "aten.upsample_nearest1d.vec": ("nearest", sample(randn(1, 2, 4), None, [1.5])),
    "aten.upsample_nearest2d.vec": ("nearest", sample(randn(1, 2, 3, 3), None, [2.0, 1.5])),
    "aten.upsample_nearest3d.vec": ("nearest", sample(randn(1, 1, 2, 3, 3), [4, 3, 5], None)),
    "aten._upsample_nearest_exact1d.vec": ("nearest-exact", sample(randn(1, 2, 4), [7], None)),
    "aten._upsample_nearest_exact2d.vec": (
        "nearest-exact",
        sample(randn(1, 2, 3, 3), None, [1.7, 2.0]),
    ),
    "aten.upsample_linear1d.vec": ("linear", sample(randn(1, 2, 4), [7], True, None)),
    "aten.upsample_bilinear2d.vec": ("bilinear", sample(randn(1, 2, 3, 3), [5, 4], False, None)),
    "aten.upsample_bicubic2d.vec": ("bicubic", sample(randn(1, 2, 3, 3), None, True, [2.0, 2.0])),
    "aten.upsample_trilinear3d.vec": (
        "trilinear",
        sample(randn(1, 1, 2, 3, 3), [3, 4, 4], False, None),
    ),
}
# Fixed-size overloads; with explicit `scales_*` they compute source indices from the scale,
# which F.interpolate(size=...) does not pass, so those nodes keep the overload.
_INTERPOLATE_SIZED = {
    "aten.upsample_nearest2d.default": ("nearest", sample(randn(1, 2, 3, 3), [6, 5])),
    "aten._upsample_nearest_exact2d.default": ("nearest-exact", sample(randn(1, 2, 3, 3), [5, 4])),
    "aten.upsample_bilinear2d.default": ("bilinear", sample(randn(1, 2, 3, 3), [5, 7], True)),
}


def _interpolate(mode: str, sized: bool):
    def render(c: Call) -> str:
        if sized and not all(is_default(c, n) for n in ("scales_h", "scales_w", "scales")):
            return raw(c)
        source = "self" if sized else "input"
        call = pycall(
            c,
            "F.interpolate",
            [source],
            ["output_size:size", "scale_factors:scale_factor"],
            defaults={"output_size": _NONE, "scale_factors": _NONE},
        )
        extra = [f"mode={mode!r}"]
        if "align_corners" in c.args:
            extra.append(f"align_corners={c['align_corners']}")
        return with_kw(call, *extra)

    return render


for _target, (_mode, _sample) in _INTERPOLATE_VEC.items():
    register(_target, sample=_sample)(_interpolate(_mode, sized=False))
for _target, (_mode, _sample) in _INTERPOLATE_SIZED.items():
    register(_target, sample=_sample)(_interpolate(_mode, sized=True))


# -- padding -------------------------------------------------------------------------------

register("aten.pad.default", sample=sample(randn(1, 2, 3, 3), [1, 1, 2, 0], "reflect"))(
    call_renderer("F.pad", ["self:input", "pad", "mode", "value"])
)
register("aten.constant_pad_nd.default", sample=sample(randn(2, 3), [1, 2, 0, 1], 0.5))(
    call_renderer("F.pad", ["self:input", "pad"], ["value"])
)

for _rank in (1, 2, 3):
    _x = randn(1, 2, *(4, 4, 3)[:_rank])
    _padding = [2, 1, 0, 1, 1, 2][: 2 * _rank]
    for _kind, _mode in (("reflection", "reflect"), ("replication", "replicate")):
        register(f"aten.{_kind}_pad{_rank}d.default", sample=sample(_x, _padding))(
            call_renderer("F.pad", ["self:input", "padding:pad"], fixed=[f"mode={_mode!r}"])
        )


# -- dropout -------------------------------------------------------------------------------

register("aten.dropout.default", sample=sample(randn(4, 5), 0.5, True))(
    call_renderer("F.dropout", ["input", "p", "train:training"])
)
register("aten.dropout_.default", sample=sample(randn(4, 5), 0.5, True))(
    call_renderer("F.dropout", ["self:input", "p", "train:training"], fixed=["inplace=True"])
)
register("aten.native_dropout.default", sample=sample(randn(4, 5), 0.5, True))(
    binding_renderer("torch.native_dropout")
)
register("aten.feature_dropout.default", sample=sample(randn(2, 3, 4, 4), 0.5, True))(
    binding_renderer("torch.feature_dropout")
)
