"""Blocked softmax attention built from batched GEMMs: the fast CPU path for bf16/fp16 training.

On CPUs, PyTorch's SDPA (flash) kernel runs bf16 no faster than fp32, while bf16 GEMMs run 4-5x faster than fp32
ones. This path computes attention a few windows at a time, so the ``(block, H, L, L)`` score tensor stays in cache,
with one GEMM for the scores (scale and per-key bias fused through ``baddbmm``), one softmax (fp32 accumulation
inside, output in the input dtype) and one GEMM for the values. When gradients are needed, the forward keeps the
probabilities for the backward while all of them fit in :data:`KEPT_PROBABILITIES_BUDGET_BYTES` (Astromer 2's
training batch of 256 windows of 200 needs at most 82 MB a layer in bf16); past that the backward recomputes them
block by block, so memory stays O(B·L) besides the inputs, as with a fused kernel. Keys hidden with ``-inf``
(padding, and the probed positions of the pretraining task) are left out of the GEMMs and the softmax: a block of
windows runs over its visible keys only, padded to the window that has the most.

Numerics: scores and probabilities are rounded to the input dtype between the GEMMs, as in eager attention under
autocast; in fp32/fp64 the result equals SDPA to rounding.

Entry points:

* :func:`blocked_attention` -- padded ``(B, H, L, D)`` windows with a per-key additive bias ``(B, L)``;
* :func:`blocked_varlen_attention` -- packed ``(T, H, D)`` tokens with ``cu_seqlens``: windows are sorted by length
  and grouped, and each group is padded only to its own longest window.

Both plan their blocks from the values of the mask and of ``cu_seqlens``. Under ``torch.compile`` they run through the
custom ops ``astromer::blocked_attn_fwd/bwd`` and ``astromer::blocked_varlen_attn_fwd/bwd`` (opaque to the graph, with
fake implementations and an autograd formula), so a model that uses them compiles to one graph; eager calls keep the
autograd Functions, which skip the dispatcher.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .reference import key_bias_in_dtype

#: Score elements per head held at once: 8 windows of 200 observations (2.5 MB of bf16 scores for 4 heads).
SCORE_BUDGET_PER_HEAD = 8 * 200 * 200

#: Largest size of one attention call's probabilities (counted over all L keys) that the forward keeps for the
#: backward; larger calls recompute them. Keeping them saves the score GEMM and the softmax of the backward: on a
#: 2-core Zen 4, a bf16 training step of Astromer 2 (256 windows of 200) went from 5.17 to 4.80 s (best of 5).
KEPT_PROBABILITIES_BUDGET_BYTES = 256 * 2**20


def _windows_per_block(length: int) -> int:
    return max(1, SCORE_BUDGET_PER_HEAD // max(1, length * length))


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the keys in the scores' dtype (PyTorch accumulates bf16/fp16 in fp32 and rounds once).

    Going through an fp32 copy rounds the same way (1 ulp apart in 0.001 % of entries) and is not faster: it was on
    one host with masked scores (445 vs 578 us a (32, 200, 200) block), but with hidden keys left out of the scores,
    bf16 training steps ran 2-8 % faster without the copy (round-robin A/B on a 2-core Zen 4)."""
    return torch.softmax(scores, -1)


def _block_forward(q, k, v, bias, scale: float, probabilities_out: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One block: q, k, v ``(n·H, L, D)`` contiguous, bias ``(n·H, 1, L)`` -> output ``(n·H, L, D)`` and the
    probabilities ``(n·H, L, L)``, written into ``probabilities_out`` when given (a view of one flat buffer that
    holds every block's probabilities, see :func:`blocked_varlen_attn_fwd`)."""
    scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale)
    if probabilities_out is None:
        probabilities = _softmax(scores)
    else:  # the same kernel as torch.softmax, writing in place of a copy
        probabilities = torch._softmax(scores, -1, False, out=probabilities_out)
    return torch.bmm(probabilities, v), probabilities


def _block_backward(q, k, v, bias, grad_o, scale: float, probabilities: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`_block_forward` for ``grad_o`` ``(n·H, L, D)``; the probabilities are recomputed unless
    the forward kept them."""
    if probabilities is None:
        probabilities = _softmax(torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale))
    grad_v = torch.bmm(probabilities.transpose(1, 2), grad_o)
    grad_p = torch.bmm(grad_o, v.transpose(1, 2))
    grad_s = torch._softmax_backward_data(grad_p, probabilities, -1, probabilities.dtype)
    grad_q = torch.bmm(grad_s, k).mul_(scale)
    grad_k = torch.bmm(grad_s.transpose(1, 2), q).mul_(scale)
    return grad_q, grad_k, grad_v


def _needs_grad(*inputs: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in inputs)


def _fits_kept_budget(score_elements: int, dtype: torch.dtype) -> bool:
    return score_elements * torch.finfo(dtype).bits // 8 <= KEPT_PROBABILITIES_BUDGET_BYTES


def _keep_probabilities(score_elements: int, dtype: torch.dtype, *inputs: torch.Tensor) -> bool:
    """Whether the forward should keep the probabilities: a backward will run and they fit the budget."""
    return _needs_grad(*inputs) and _fits_kept_budget(score_elements, dtype)


def _flat_views(flat: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Consecutive views of the 1-D ``flat`` with the given shapes."""
    views, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        views.append(flat[offset:offset + size].view(shape))
        offset += size
    return views


class _KeyBlock(NamedTuple):
    """The visible keys of one block of padded windows, when some are hidden: their token rows ``index`` ``(n,
    width)`` in the ``(B·L, H, D)`` key memory (a window with fewer than ``width`` visible keys fills its row with
    distinct hidden keys, whose probability, and so gradient, is exactly 0) and ``bias`` ``(n·H, 1, width)``."""

    index: torch.Tensor
    bias: torch.Tensor


def _plan_key_blocks(bias: torch.Tensor, block: int, heads: int) -> list[_KeyBlock | None]:
    """Per block of ``bias`` ``(B, 1, L)``: a :class:`_KeyBlock` when every window of the block hides keys with
    ``-inf``, so attention runs over the visible keys only (Astromer 2's pretraining hides 32 % of the keys of each
    window); ``None`` where a window sees every key. A ``-inf`` key has probability exactly 0, so leaving it out
    changes the result only by the order of the roundings."""
    batch, _, length = bias.shape
    starts = range(0, batch, block)
    visible = torch.isfinite(bias[:, 0])
    if bool(visible.all()):
        return [None] * len(starts)
    counts = visible.sum(1)
    widths = [int(counts[start:start + block].max()) for start in starts]
    order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)  # visible keys first, in order
    plans = []
    for start, width in zip(starts, widths):
        if width == length:
            plans.append(None)
            continue
        stop = min(start + block, batch)
        columns = order[start:stop, :width]
        index = columns + torch.arange(start, stop, device=bias.device)[:, None] * length
        block_bias = torch.gather(bias[start:stop, 0], 1, columns).unsqueeze(1)
        plans.append(_KeyBlock(index, _per_head(block_bias, heads)))
    return plans


def _token_rows(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, D)`` -> ``(B·L, H, D)``, a view when ``x`` is a transposed view of ``(B, L, H, D)`` memory."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[-1])


def _padded_score_shapes(batch: int, heads: int, length: int, block: int,
                         key_blocks: list[_KeyBlock | None]) -> list[tuple[int, int, int]]:
    """The probabilities' shape ``(n·H, L, width)`` of each block of :func:`_padded_forward`."""
    return [((min(start + block, batch) - start) * heads, length, length if plan is None else plan.index.shape[1])
            for start, plan in zip(range(0, batch, block), key_blocks)]


def _padded_forward(query, key, value, bias, scale: float, block: int, key_blocks: list[_KeyBlock | None],
                    keep: bool, probability_buffers: list[torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """q, k, v ``(B, H, L, D)`` (any strides), bias ``(B, 1, L)`` in q's dtype, one :func:`_plan_key_blocks` entry
    per block -> output ``(B, L, H, D)`` and, with ``keep``, the probabilities of every block."""
    batch, heads, length, _ = query.shape
    out = query.new_empty(batch, length, heads, value.shape[-1])
    key_rows, value_rows = (_token_rows(t) if any(key_blocks) else None for t in (key, value))
    kept = []
    for index, (start, plan) in enumerate(zip(range(0, batch, block), key_blocks)):
        rows = slice(start, min(start + block, batch))
        attended, probabilities = _block_forward(_flat(query[rows]), *_block_keys(key, value, key_rows, value_rows,
                                                                                  bias, rows, plan),
                                                 scale, None if probability_buffers is None else
                                                 probability_buffers[index])
        out[rows] = attended.view(-1, heads, length, value.shape[-1]).transpose(1, 2)
        if keep:
            kept.append(probabilities)
    return out, kept


def _padded_backward(grad_out, query, key, value, bias, scale: float, block: int,
                     key_blocks: list[_KeyBlock | None], kept: list[torch.Tensor] | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`_padded_forward` for ``grad_out`` ``(B, L, H, D)``, as ``(B, H, L, D)`` views of
    ``(B, L, H, D)`` memory; ``kept``: the probabilities the forward kept, or None to recompute them."""
    batch, heads, length, _ = query.shape
    compact = any(key_blocks)
    key_rows, value_rows = (_token_rows(t) if compact else None for t in (key, value))
    # Gradients are written in (B, L, H, D) memory order, which is what the projections' backward wants. With
    # compacted keys, the hidden keys left out of every block keep a zero gradient.
    grads = [torch.empty(batch, length, heads, query.shape[-1], dtype=query.dtype, device=query.device)]
    grads += [(torch.zeros if compact else torch.empty)(batch * length, heads, t.shape[-1], dtype=t.dtype,
                                                        device=t.device) for t in (key, value)]
    windows = [g.view(batch, length, heads, -1) for g in grads]
    for index, (start, plan) in enumerate(zip(range(0, batch, block), key_blocks)):
        rows = slice(start, min(start + block, batch))
        parts = _block_backward(_flat(query[rows]), *_block_keys(key, value, key_rows, value_rows, bias, rows, plan),
                                _flat(grad_out[rows].transpose(1, 2)), scale, kept[index] if kept else None)
        for position, (grad, window, part) in enumerate(zip(grads, windows, parts)):
            if plan is None or position == 0:  # the queries are never compacted
                window[rows] = part.view(-1, heads, length, part.shape[-1]).transpose(1, 2)
            else:
                grad.index_copy_(0, plan.index.reshape(-1), _token_major(part, plan.index.shape[0]))
    return tuple(w.transpose(1, 2) for w in windows)  # type: ignore[return-value]


class _BlockedSoftmaxAttention(torch.autograd.Function):
    """Eager autograd of :func:`_padded_forward` (the compiled path uses the ``astromer::blocked_attn_*`` ops)."""

    @staticmethod
    def forward(ctx, query, key, value, bias, scale: float, block: int, keep_probabilities: bool,
                key_blocks: list[_KeyBlock | None]):
        out, kept = _padded_forward(query, key, value, bias, scale, block, key_blocks, keep_probabilities)
        ctx.save_for_backward(query, key, value, bias, *kept)
        ctx.scale, ctx.block, ctx.key_blocks = scale, block, key_blocks
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, bias, *kept = ctx.saved_tensors
        grads = _padded_backward(grad_out, query, key, value, bias, ctx.scale, ctx.block, ctx.key_blocks, kept)
        return (*grads, None, None, None, None, None)


def _block_keys(key, value, key_rows, value_rows, bias, rows: slice, plan: _KeyBlock | None):
    """Keys ``(n·H, width, D)``, values and bias ``(n·H, 1, width)`` of one block: all ``L`` positions, or only the
    visible ones of ``plan``."""
    if plan is None:
        return _flat(key[rows]), _flat(value[rows]), _per_head(bias[rows], key.shape[1])
    return _gather(key_rows, plan.index), _gather(value_rows, plan.index), plan.bias


class _Group(NamedTuple):
    """Sequences attended together: token ``index`` ``(n, width)`` (padding repeats a real token), ``real`` ``(n,
    width)`` bool, ``bias`` ``(n·H, 1, width)`` in the compute dtype (-inf on padding), the real tokens in order,
    and their positions in the flattened ``(n·width)`` block (``None`` when the group has no padding)."""

    index: torch.Tensor
    real: torch.Tensor
    bias: torch.Tensor
    tokens: torch.Tensor
    real_positions: torch.Tensor | None


def _varlen_forward(q, k, v, groups: list[_Group], scale: float, keep: bool,
                    probability_buffers: list[torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Packed q, k, v ``(T, H, D)`` and a list of :class:`_Group` -> ``(T, H, D)`` (tokens in no group get 0) and,
    with ``keep``, the probabilities of every group."""
    out = q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
    kept = []
    for index, group in enumerate(groups):
        attended, probabilities = _block_forward(*(_gather(t, group.index) for t in (q, k, v)), group.bias, scale,
                                                 None if probability_buffers is None else probability_buffers[index])
        out.index_copy_(0, group.tokens, _scatter_rows(attended, group))
        if keep:
            kept.append(probabilities)
    return out, kept


def _varlen_backward(grad_out, q, k, v, groups: list[_Group], scale: float, kept: list[torch.Tensor] | None
                     ) -> list[torch.Tensor]:
    """Gradients of :func:`_varlen_forward` in q, k, v; ``kept``: the forward's probabilities, or None to
    recompute them."""
    grads = [torch.zeros_like(t) for t in (q, k, v)]
    for index, group in enumerate(groups):
        # padded query rows must pass nothing back
        grad_o = _gather(grad_out, group.index, zero=None if group.real_positions is None else ~group.real)
        parts = _block_backward(*(_gather(t, group.index) for t in (q, k, v)), group.bias, grad_o, scale,
                                kept[index] if kept else None)
        for grad, part in zip(grads, parts):
            grad.index_copy_(0, group.tokens, _scatter_rows(part, group))
    return grads


def _group_score_shapes(groups: list[_Group]) -> list[tuple[int, int, int]]:
    """The probabilities' shape ``(n·H, width, width)`` of each group."""
    return [(group.bias.shape[0], group.index.shape[1], group.index.shape[1]) for group in groups]


class _BlockedVarlenAttention(torch.autograd.Function):
    """Eager autograd of :func:`_varlen_forward` (the compiled path uses the ``astromer::blocked_varlen_attn_*``
    ops)."""

    @staticmethod
    def forward(ctx, q, k, v, groups: list[_Group], scale: float, keep_probabilities: bool):
        out, kept = _varlen_forward(q, k, v, groups, scale, keep_probabilities)
        ctx.save_for_backward(q, k, v, *kept)
        ctx.groups, ctx.scale = groups, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, *kept = ctx.saved_tensors
        return (*_varlen_backward(grad_out, q, k, v, ctx.groups, ctx.scale, kept), None, None, None)


def _gather(x: torch.Tensor, index: torch.Tensor, zero: torch.Tensor | None = None) -> torch.Tensor:
    """``(T, H, D)`` rows at ``index`` ``(n, width)`` -> contiguous ``(n·H, width, D)``."""
    n, width = index.shape
    rows = x.index_select(0, index.reshape(-1)).view(n, width, x.shape[1], x.shape[2])
    if zero is not None:
        rows = rows.masked_fill(zero[:, :, None, None], 0)
    return rows.transpose(1, 2).reshape(-1, width, x.shape[2])


def _scatter_rows(block: torch.Tensor, group: _Group) -> torch.Tensor:
    """``(n·H, width, D)`` -> the real rows as ``(tokens, H, D)``, in the order of ``group.tokens``."""
    rows = _token_major(block, group.index.shape[0])
    return rows if group.real_positions is None else rows.index_select(0, group.real_positions)


def _token_major(block: torch.Tensor, windows: int) -> torch.Tensor:
    """``(n·H, width, D)`` -> ``(n·width, H, D)``."""
    width, dim = block.shape[1], block.shape[2]
    return block.view(windows, -1, width, dim).transpose(1, 2).reshape(-1, block.shape[0] // windows, dim)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``(b, H, L, D)`` -> contiguous ``(b*H, L, D)``."""
    return x.reshape(-1, x.shape[-2], x.shape[-1])


def _per_head(bias: torch.Tensor, heads: int) -> torch.Tensor:
    """``(b, 1, L)`` -> ``(b*H, 1, L)`` broadcastable over query rows (a view where possible)."""
    return bias.unsqueeze(1).expand(-1, heads, -1, -1).reshape(-1, 1, bias.shape[-1])


def blocked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    windows_per_block: int | None = None,
) -> torch.Tensor:
    """Softmax attention over padded windows, computed a block of windows at a time.

    Args:
        query, key, value: ``(B, H, L, D)`` (any strides, e.g. transposed views of a projection output).
        key_bias: optional float ``(B, L)`` added to every score whose key is that position: ``-inf`` hides the key,
            finite values (Astromer 2 uses -1e9) bias it. Receives no gradient.
        softmax_scale: defaults to ``D ** -0.5``.
        windows_per_block: windows per block; by default as many as keep ``block·L²`` scores per head within
            :data:`SCORE_BUDGET_PER_HEAD`.

    Returns:
        ``(B, L, H, D)`` (the layout attention modules reshape to ``(B, L, H·D)``). A window whose keys are all
        ``-inf`` yields 0 and passes no gradient.
    """
    if query.dim() != 4 or key.shape != query.shape or value.shape[:-1] != query.shape[:-1]:
        raise ValueError(
            f"blocked_attention expects query/key/value (B, H, L, D) with equal B, H, L (and D for query/key); got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    batch, _, length, head_dim = query.shape
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    block = int(windows_per_block) if windows_per_block else _windows_per_block(length)
    if key_bias is not None and key_bias.shape != (batch, length):
        raise ValueError(f"key_bias must be (B, L) = {(batch, length)}, got {tuple(key_bias.shape)}")
    if torch.compiler.is_compiling():
        return _compiled_blocked_attention(query, key, value, key_bias, scale, block)
    keep = _keep_probabilities(batch * query.shape[1] * length * length, query.dtype, query, key, value)
    if key_bias is None:
        bias = query.new_zeros(batch, 1, length)
        return _BlockedSoftmaxAttention.apply(query, key, value, bias, scale, block, keep,
                                              _plan_key_blocks(bias, block, query.shape[1]))
    visible = torch.isfinite(key_bias).any(dim=1)
    all_visible = bool(visible.all())
    if not all_visible:  # no finite key: attend uniformly (no NaN), then zero the output and its gradient
        key_bias = torch.where(visible[:, None], key_bias, torch.zeros_like(key_bias))
    bias = key_bias_in_dtype(key_bias, query.dtype).unsqueeze(1)
    key_blocks = _plan_key_blocks(bias, block, query.shape[1])
    out = _BlockedSoftmaxAttention.apply(query, key, value, bias, scale, block, keep, key_blocks)
    return out if all_visible else out * visible[:, None, None, None].to(out.dtype)


def blocked_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    key_bias: torch.Tensor | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Block-diagonal attention over packed sequences; same arguments and result as
    :func:`~astromer_kernels.varlen_attention` (``(T, H, D)`` in, ``(T, H, D)`` out, tokens after
    ``cu_seqlens[-1]`` get 0, sequences without a visible key get 0).

    Sequences are sorted by length and grouped so each group's padded scores fit the per-block budget; a group is
    padded only to its own longest sequence, so short windows cost little. Under ``torch.compile`` the planning and
    the attention run inside the ``astromer::blocked_varlen_attn_fwd`` op, opaque to the graph.
    """
    del max_seqlen  # the groups' own lengths are used
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if torch.compiler.is_compiling():
        out, _ = blocked_varlen_attn_fwd(q, k, v, cu_seqlens, key_bias, scale, _needs_grad(q, k, v))
        return out
    groups = _plan_groups(cu_seqlens, key_bias, q.shape[0], q.shape[1], q.dtype, q.device)
    score_elements = sum(group.bias.shape[0] * group.index.shape[1] ** 2 for group in groups)
    keep = _keep_probabilities(score_elements, q.dtype, q, k, v)
    return _BlockedVarlenAttention.apply(q, k, v, groups, scale, keep)


def _plan_groups(cu_seqlens, key_bias, total: int, heads: int, dtype, device) -> list[_Group]:
    """Length-sorted groups of sequences; sequences that are empty or have no visible key are left out (output 0)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long().cpu()
    starts = cu_seqlens[:-1].long().cpu()
    if key_bias is None:
        key_bias = torch.zeros(total, dtype=torch.float32, device=device)
    visible_tokens = torch.isfinite(key_bias).to(torch.int64).cumsum(0).cpu()
    visible_tokens = torch.cat([visible_tokens.new_zeros(1), visible_tokens])
    has_visible = visible_tokens[starts + lengths] > visible_tokens[starts]
    order = torch.argsort(lengths, descending=True, stable=True)
    order = order[has_visible[order]]
    groups, position = [], 0
    while position < order.numel():
        width = int(lengths[order[position]])
        count = min(_windows_per_block(width), order.numel() - position)
        members = order[position:position + count]
        position += count
        offsets = torch.arange(width)
        real = offsets[None, :] < lengths[members, None]
        index = torch.where(real, starts[members, None] + offsets, starts[members, None]).to(device)
        real = real.to(device)
        bias = key_bias_in_dtype(key_bias.index_select(0, index.reshape(-1)).view(count, width), dtype)
        bias = bias.masked_fill(~real, float("-inf")).unsqueeze(1)
        padded = not bool(real.all())
        positions = real.reshape(-1).nonzero().squeeze(1) if padded else None
        tokens = index.reshape(-1) if positions is None else index.reshape(-1).index_select(0, positions)
        groups.append(_Group(index, real, _per_head(bias, heads), tokens, positions))
    return groups


# ----------------------------------------------------------------------------------------------------------------
# Custom ops for torch.compile
# ----------------------------------------------------------------------------------------------------------------
# The blocks and groups above are planned from the values of the mask and of cu_seqlens, which a compiled graph cannot
# trace. Under torch.compile the two entry points run through these ops instead: each plans and attends inside one
# opaque call (fake implementations give the output shapes), and the forward returns the probabilities it keeps for
# the backward op as one flat tensor whose size depends on the data (empty when they are recomputed). The eager path
# keeps its autograd Functions, which skip the dispatcher. The planning reads mask values on the host (a device
# synchronisation on GPUs), so CUDA graphs must leave these ops out.
_HOST_PLANNED = {"tags": (torch.Tag.cudagraph_unsafe,)} if hasattr(torch.Tag, "cudagraph_unsafe") else {}


@torch.library.custom_op("astromer::blocked_attn_fwd", mutates_args=(), **_HOST_PLANNED)
def blocked_attn_fwd(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
                     softmax_scale: float, windows_per_block: int, keep_probabilities: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded blocked attention: q, k, v ``(B, H, L, D)``, bias ``(B, 1, L)`` in q's dtype (every window with a
    finite key) -> output ``(B, L, H, D)`` and the kept probabilities, flat (empty unless ``keep_probabilities`` and
    they fit :data:`KEPT_PROBABILITIES_BUDGET_BYTES`)."""
    batch, heads, length, _ = query.shape
    key_blocks = _plan_key_blocks(bias, windows_per_block, heads)
    keep = keep_probabilities and _fits_kept_budget(batch * heads * length * length, query.dtype)
    shapes = _padded_score_shapes(batch, heads, length, windows_per_block, key_blocks) if keep else []
    flat = query.new_empty(sum(math.prod(shape) for shape in shapes))
    out, _ = _padded_forward(query, key, value, bias, softmax_scale, windows_per_block, key_blocks, False,
                             _flat_views(flat, shapes) if keep else None)
    return out, flat


@blocked_attn_fwd.register_fake
def _(query, key, value, bias, softmax_scale, windows_per_block, keep_probabilities):
    batch, heads, length, _ = query.shape
    kept = torch.library.get_ctx().new_dynamic_size()
    return query.new_empty(batch, length, heads, value.shape[-1]), query.new_empty(kept)


@torch.library.custom_op("astromer::blocked_attn_bwd", mutates_args=(), **_HOST_PLANNED)
def blocked_attn_bwd(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     bias: torch.Tensor, probabilities: torch.Tensor, softmax_scale: float, windows_per_block: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`blocked_attn_fwd` in q, k, v (``(B, H, L, D)`` views of ``(B, L, H, D)`` memory); the
    probabilities are recomputed when ``probabilities`` is empty."""
    batch, heads, length, _ = query.shape
    key_blocks = _plan_key_blocks(bias, windows_per_block, heads)
    kept = None
    if probabilities.numel():
        kept = _flat_views(probabilities, _padded_score_shapes(batch, heads, length, windows_per_block, key_blocks))
    return _padded_backward(grad_out, query, key, value, bias, softmax_scale, windows_per_block, key_blocks, kept)


@blocked_attn_bwd.register_fake
def _(grad_out, query, key, value, bias, probabilities, softmax_scale, windows_per_block):
    batch, heads, length, _ = query.shape
    return tuple(t.new_empty(batch, length, heads, t.shape[-1]).transpose(1, 2) for t in (query, key, value))


def _blocked_attn_setup_context(ctx, inputs, output):
    query, key, value, bias, softmax_scale, windows_per_block, _ = inputs
    ctx.save_for_backward(query, key, value, bias, output[1])
    ctx.softmax_scale, ctx.windows_per_block = softmax_scale, windows_per_block


def _blocked_attn_backward(ctx, grad_out, grad_probabilities):
    query, key, value, bias, probabilities = ctx.saved_tensors
    grads = blocked_attn_bwd(grad_out, query, key, value, bias, probabilities, ctx.softmax_scale,
                             ctx.windows_per_block)
    return (*grads, None, None, None, None)


blocked_attn_fwd.register_autograd(_blocked_attn_backward, setup_context=_blocked_attn_setup_context)


def _compiled_blocked_attention(query, key, value, key_bias, scale: float, block: int) -> torch.Tensor:
    """:func:`blocked_attention` in a compiled graph: the same result without branching on the mask's values (a
    window without a finite key attends uniformly, then its output is multiplied by 0; other windows by 1)."""
    batch, _, length, _ = query.shape
    if key_bias is None:
        bias = query.new_zeros(batch, 1, length)
        visible = None
    else:
        visible = torch.isfinite(key_bias).any(dim=1)
        key_bias = torch.where(visible[:, None], key_bias, torch.zeros_like(key_bias))
        bias = key_bias_in_dtype(key_bias, query.dtype).unsqueeze(1)
    out, _ = blocked_attn_fwd(query, key, value, bias, scale, block, _needs_grad(query, key, value))
    return out if visible is None else out * visible[:, None, None, None].to(out.dtype)


@torch.library.custom_op("astromer::blocked_varlen_attn_fwd", mutates_args=(), **_HOST_PLANNED)
def blocked_varlen_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            key_bias: torch.Tensor | None, softmax_scale: float, keep_probabilities: bool
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed blocked attention (:func:`blocked_varlen_attention`): ``(T, H, D)`` output and the kept probabilities,
    flat (empty unless ``keep_probabilities`` and they fit :data:`KEPT_PROBABILITIES_BUDGET_BYTES`)."""
    groups = _plan_groups(cu_seqlens, key_bias, q.shape[0], q.shape[1], q.dtype, q.device)
    shapes = _group_score_shapes(groups)
    keep = keep_probabilities and _fits_kept_budget(sum(math.prod(shape) for shape in shapes), q.dtype)
    flat = q.new_empty(sum(math.prod(shape) for shape in shapes) if keep else 0)
    out, _ = _varlen_forward(q, k, v, groups, softmax_scale, False, _flat_views(flat, shapes) if keep else None)
    return out, flat


@blocked_varlen_attn_fwd.register_fake
def _(q, k, v, cu_seqlens, key_bias, softmax_scale, keep_probabilities):
    kept = torch.library.get_ctx().new_dynamic_size()
    return q.new_empty(q.shape[0], q.shape[1], v.shape[-1]), q.new_empty(kept)


@torch.library.custom_op("astromer::blocked_varlen_attn_bwd", mutates_args=(), **_HOST_PLANNED)
def blocked_varlen_attn_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            cu_seqlens: torch.Tensor, key_bias: torch.Tensor | None, probabilities: torch.Tensor,
                            softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`blocked_varlen_attn_fwd` in q, k, v (the groups are planned again, the probabilities
    recomputed when ``probabilities`` is empty)."""
    groups = _plan_groups(cu_seqlens, key_bias, q.shape[0], q.shape[1], q.dtype, q.device)
    kept = _flat_views(probabilities, _group_score_shapes(groups)) if probabilities.numel() else None
    return tuple(_varlen_backward(grad_out, q, k, v, groups, softmax_scale, kept))  # type: ignore[return-value]


@blocked_varlen_attn_bwd.register_fake
def _(grad_out, q, k, v, cu_seqlens, key_bias, probabilities, softmax_scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _blocked_varlen_setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, key_bias, softmax_scale, _ = inputs
    ctx.save_for_backward(q, k, v, cu_seqlens, key_bias, output[1])
    ctx.softmax_scale = softmax_scale


def _blocked_varlen_backward(ctx, grad_out, grad_probabilities):
    q, k, v, cu_seqlens, key_bias, probabilities = ctx.saved_tensors
    grads = blocked_varlen_attn_bwd(grad_out, q, k, v, cu_seqlens, key_bias, probabilities, ctx.softmax_scale)
    return (*grads, None, None, None, None)


blocked_varlen_attn_fwd.register_autograd(_blocked_varlen_backward, setup_context=_blocked_varlen_setup_context)
