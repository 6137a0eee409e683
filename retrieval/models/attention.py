"""Packed attention for vision towers that attend within each image (or window) of a batch.

transformers' Qwen2-VL, Qwen2.5-VL and Qwen3-VL vision towers pack a batch's patches into one
sequence. Unless a flash-attention implementation is configured, every vision block then
splits it with ``cu_seqlens.tolist()`` (a GPU sync) and runs one attention call per image or
per window: for a batch of 32 pages, 32 syncs and 1,024 attention calls a forward pass on
Qwen2-VL, tens of thousands of tiny ones on Qwen2.5-VL's 8 x 8 windows. The CPU and the GPU
then take turns instead of overlapping, and any contention for the GIL adds to every turn.

``packed_sdpa`` takes the flash-attention calling convention (``cu_seq_lens_q`` and
``max_length_q`` once a forward pass, no sync in the blocks) and runs PyTorch's SDPA once per
block: as a batch when every sequence has the same length (the common case: a batch of pages of
one grid), else over sequences padded to the longest, with the padding masked out of the keys.
Same attention, same inputs to each softmax; ``use(model)`` switches a model's vision tower to it.
For sequences of unequal lengths, the gather plan is made on the host by ``QwenVL.complete``
(``layout_inputs``) and reaches each block as inputs, pinned and copied with the rest; without
it the plan is made here, where ``cu_seq_lens_q`` is. No step of it (no boolean-mask indexing
either) reads a device value back.
"""

from __future__ import annotations

from collections import deque
from typing import Any

NAME = "packed_flash_sdpa"  # "flash" in the name: transformers passes cu_seqlens, as to flash
# The gather plans of the last few cu_seqlens tensors, by identity: the blocks of one forward
# pass share one (or two: Qwen2.5-VL's windows and whole images).
_layouts: deque[tuple[Any, tuple[Any, Any, Any]]] = deque(maxlen=8)


def packed_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any = None,
    *,
    cu_seq_lens_q: Any,
    max_length_q: int,
    scaling: float | None = None,
    dropout: float = 0.0,
    packed_index: Any = None,
    packed_valid: Any = None,
    packed_rows: Any = None,
    window_packed_index: Any = None,
    window_packed_valid: Any = None,
    window_packed_rows: Any = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """query, key, value: (1, heads, total, head_dim), the sequences packed back to back as
    ``cu_seq_lens_q`` says. Returns (1, total, heads, head_dim), as transformers' flash path.
    ``packed_*`` / ``window_packed_*``: the gather plans of the images and of the windows
    (``layout_inputs``), made on the host beforehand and copied in with the other inputs;
    the one of this call's shape is used, else the plan is made here."""
    import torch.nn.functional as F

    _, heads, total, dim = query.shape
    n = cu_seq_lens_q.numel() - 1
    longest = int(max_length_q)
    if n * longest == total:  # every sequence is the longest: a plain batch
        q, k, v = (t.reshape(heads, n, longest, dim).transpose(0, 1) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling)
        return out.transpose(0, 1).reshape(1, heads, total, dim).transpose(1, 2), None
    plans = [
        (packed_index, packed_valid, packed_rows),
        (window_packed_index, window_packed_valid, window_packed_rows),
    ]
    given = (
        (i, v, r)
        for i, v, r in plans
        if i is not None and tuple(i.shape) == (n, longest) and r.numel() == total
    )
    index, valid, rows = next(given, None) or _layout(
        cu_seq_lens_q, n, longest, query.device, total
    )
    q, k, v = (t[0][:, index].transpose(0, 1) for t in (query, key, value))  # (n, H, L, d)
    mask = valid[:, None, None, :]  # padded keys take no part
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
    packed = out.transpose(1, 2).reshape(n * longest, heads, dim)[rows]  # padding dropped
    return packed.unsqueeze(0), None


def _layout(cu_seqlens: Any, n: int, longest: int, device: Any, total: int) -> tuple[Any, Any, Any]:
    """(index, valid, rows): where each of the (n, longest) padded slots reads from, whether it
    holds a token, and for each token, in order, its padded slot (total,). Computed once per
    ``cu_seqlens`` (once a forward pass) where ``cu_seqlens`` is, then moved to ``device``;
    every size is known beforehand, so nothing is read back from the device."""
    for seen, plan in list(_layouts):
        if seen is cu_seqlens and plan[0].shape == (n, longest) and plan[0].device == device:
            return plan
    plan = tuple(t.to(device, non_blocking=True) for t in _plan(cu_seqlens, longest, total))
    _layouts.append((cu_seqlens, plan))
    return plan


def _plan(cu_seqlens: Any, longest: int, total: int) -> tuple[Any, Any, Any]:
    """(index, valid, rows) where ``cu_seqlens`` is."""
    import torch

    bounds = cu_seqlens.long()
    starts, lengths = bounds[:-1], bounds[1:] - bounds[:-1]
    offsets = torch.arange(longest, device=bounds.device)
    valid = offsets[None, :] < lengths[:, None]
    index = torch.where(valid, starts[:, None] + offsets[None, :], 0)
    token = torch.arange(total, device=bounds.device)
    sequence = torch.searchsorted(bounds[1:], token, right=True)
    rows = sequence * longest + token - starts[sequence]
    return index, valid, rows


def layout_inputs(prefix: str, cu_seqlens: Any, longest: int) -> dict[str, Any]:
    """The gather plan of sequences of unequal lengths, made on the host (``cu_seqlens`` is
    there), as model inputs named ``{prefix}_index``, ``_valid``, ``_rows``: they travel to the
    device with the other inputs, pinned, and reach ``packed_sdpa`` through the vision
    tower's kwargs. Made inside a compiled block instead, the plan would be a CPU kernel and a
    copy from pageable memory, which waits for the stream, in every block. None needed (empty)
    when every sequence has the same length."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    total = int(cu_seqlens[-1])
    if int(lengths.min()) == int(longest) == int(lengths.max()):
        return {}
    index, valid, rows = _plan(cu_seqlens, int(longest), total)
    return {f"{prefix}_index": index, f"{prefix}_valid": valid, f"{prefix}_rows": rows}


def use(visual: Any) -> bool:
    """Run a model's vision tower ``visual`` on ``packed_sdpa`` where it uses SDPA; True if it
    does."""
    from transformers import AttentionInterface

    config = getattr(visual, "config", None)
    if config is None or config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(NAME, packed_sdpa)
    config._attn_implementation = NAME
    return True
