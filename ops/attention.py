"""The scaled-dot-product-attention kernels export records, on whichever device runs them.

Export records the attention kernel of the device it traced on: ``_for_cpu`` on a CPU,
``_efficient_``, ``_flash_`` or ``_cudnn_`` on CUDA. Each exists on one device only, so a
program moved to the other device would stop at that node. Each kernel here calls the
recorded op where the tensors are on its device, and elsewhere computes the same attention
with what that device has, returning the recorded op's whole output tuple: the attention
output and log-sum-exp as computed, the random-state and sequence-length outputs (which only
dropout and variable-length batches use, neither of which an exported inference graph has)
as empty placeholders of the recorded types.
"""

from __future__ import annotations

from pt2interp.ops._render import raw
from pt2interp.ops.registry import Call, register

__all__ = ["cudnn_attention", "efficient_attention", "flash_attention", "flash_attention_for_cpu"]


def _attend(query, key, value, mask, dropout_p: float, is_causal: bool, scale):
    """(output, logsumexp over the keys) with what ``query``'s device has."""
    import torch

    aten = torch.ops.aten
    if query.device.type == "cpu":
        return tuple(
            aten._scaled_dot_product_flash_attention_for_cpu.default(
                query, key, value, dropout_p, is_causal, attn_mask=mask, scale=scale
            )
        )
    if query.device.type == "cuda":
        bias = None if mask is None else efficient_bias(mask, query, key)
        if bias is None or bias.dtype == query.dtype:
            try:
                out, lse, *_ = aten._scaled_dot_product_efficient_attention.default(
                    query, key, value, bias, True, dropout_p, is_causal, scale=scale
                )
                return out, lse[..., : query.shape[-2]]  # CUDA pads it to a multiple of 32
            except torch.OutOfMemoryError:
                raise
            except RuntimeError:
                pass  # a dtype or head size the kernel lacks: the math below has no such limits
    return _math_attention(query, key, value, mask, dropout_p, is_causal, scale)


_EFFICIENT_ALIGNMENT = 8  # elements; torch's SDPA pads a bias to this before the CUDA kernel


def efficient_bias(mask, query, key):
    """``mask`` as CUDA's memory-efficient kernel takes a bias, prepared as torch's own
    ``scaled_dot_product_attention`` prepares it (the recorded CPU kernel took it as it was): a
    boolean mask as 0 / -inf in the query's dtype, every stride but the last a multiple of 8
    elements (a padded copy, sliced back), broadcast to (batch, heads, queries, keys). The
    kernel refuses a bias laid out otherwise ("attn_bias is not correctly aligned")."""
    import torch

    if mask.dtype == torch.bool:
        mask = torch.zeros_like(mask, dtype=query.dtype).masked_fill_(~mask, float("-inf"))
    if any(s % _EFFICIENT_ALIGNMENT for s in mask.stride()[:-1]):
        keys = mask.shape[-1]
        pad = -keys % _EFFICIENT_ALIGNMENT
        mask = torch.nn.functional.pad(mask, (0, pad))[..., :keys]
    return mask.expand(*query.shape[:-1], key.shape[-2])


def _math_attention(query, key, value, mask, dropout_p: float, is_causal: bool, scale):
    import math

    import torch

    scale = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    accumulate = torch.promote_types(query.dtype, torch.float32)  # half types in float32
    scores = (query @ key.transpose(-2, -1)).to(accumulate) * scale
    if is_causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if mask is not None:
        scores = (
            scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        )
    lse = scores.logsumexp(-1)
    weights = (scores - lse.unsqueeze(-1)).exp()
    if dropout_p > 0:
        weights = torch.nn.functional.dropout(weights, dropout_p)
    return weights.to(value.dtype) @ value, lse


def _empty(like, dtype=None):
    import torch

    return torch.empty(0, dtype=dtype or like.dtype, device=like.device)


def flash_attention_for_cpu(
    query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None
):
    return _attend(query, key, value, attn_mask, dropout_p, is_causal, scale)


def efficient_attention(
    query, key, value, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, *, scale=None
):
    import torch

    if query.device.type == "cuda":
        return torch.ops.aten._scaled_dot_product_efficient_attention.default(
            query, key, value, attn_bias, compute_log_sumexp, dropout_p, is_causal, scale=scale
        )
    out, lse = _attend(query, key, value, attn_bias, dropout_p, is_causal, scale)
    seed = torch.zeros((), dtype=torch.int64, device=query.device)
    return out, lse if compute_log_sumexp else _empty(lse), seed, seed.clone()


def _varlen_outputs(query, key, out, lse):
    """flash/cudnn attention's tuple around ``out`` and ``lse`` (no debug mask: no dropout)."""
    import torch

    no_offsets = _empty(query, torch.int32)
    rng = torch.zeros(2, dtype=torch.int64, device=query.device)
    return (
        out,
        lse,
        no_offsets,
        no_offsets.clone(),
        query.shape[-2],
        key.shape[-2],
        rng,
        _empty(query, torch.int64),
        _empty(query),
    )


def flash_attention(
    query, key, value, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None
):
    import torch

    if query.device.type == "cuda":
        return torch.ops.aten._scaled_dot_product_flash_attention.default(
            query, key, value, dropout_p, is_causal, return_debug_mask, scale=scale
        )
    out, lse = _attend(query, key, value, None, dropout_p, is_causal, scale)
    return _varlen_outputs(query, key, out, lse)


def cudnn_attention(
    query,
    key,
    value,
    attn_bias,
    compute_log_sumexp,
    dropout_p=0.0,
    is_causal=False,
    return_debug_mask=False,
    *,
    scale=None,
):
    import torch

    if query.device.type == "cuda":
        return torch.ops.aten._scaled_dot_product_cudnn_attention.default(
            query,
            key,
            value,
            attn_bias,
            compute_log_sumexp,
            dropout_p,
            is_causal,
            return_debug_mask,
            scale=scale,
        )
    out, lse = _attend(query, key, value, attn_bias, dropout_p, is_causal, scale)
    return _varlen_outputs(query, key, out, lse if compute_log_sumexp else _empty(lse))


def _sample(gen):
    import torch

    q, k, v = (torch.randn(1, 2, 3, 4, generator=gen) for _ in range(3))
    return (q, k, v, 0.0, True), {}


register(
    "aten._scaled_dot_product_flash_attention_for_cpu.default",
    kernel=flash_attention_for_cpu,
    sample=_sample,
    family="nn",
)(raw)


def _portable(outputs: int, mask: str | None):
    """Generated code for a CUDA-only kernel: ``F.scaled_dot_product_attention``, which runs
    on any device, in a tuple of the recorded op's length (the attention output first; the
    rest, which inference graphs do not read, None)."""

    def render(c: Call) -> str:
        names = [n for n in ("dropout_p", "is_causal", "scale") if c.has(n)]
        if mask and c.has(mask):
            names.insert(0, mask)
        kw = [f"{'attn_mask' if n == mask else n}={c[n]}" for n in names]
        call = (
            f"F.scaled_dot_product_attention({', '.join([c['query'], c['key'], c['value'], *kw])})"
        )
        return f"({call}, {', '.join(['None'] * (outputs - 1))})"

    return render


register(
    "aten._scaled_dot_product_efficient_attention.default", kernel=efficient_attention, family="nn"
)(_portable(4, "attn_bias"))
register("aten._scaled_dot_product_flash_attention.default", kernel=flash_attention, family="nn")(
    _portable(9, None)
)
register("aten._scaled_dot_product_cudnn_attention.default", kernel=cudnn_attention, family="nn")(
    _portable(9, "attn_bias")
)
