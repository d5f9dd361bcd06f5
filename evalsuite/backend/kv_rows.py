"""The KV state of a batch of rows decoded together: a prefix every row shares, kept once and read through
``shared_prefix_attention``, and each row's own columns in a preallocated slab."""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SHARED_PREFIX_ATTENTION = "evalsuite_shared_prefix"


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            shared_prefix=None, **kwargs):
    """Attention over [a prefix every row shares | each row's own cached columns], as one softmax.

    The shared keys and values ([1, kv heads, P, dim] per layer, in ``shared_prefix``) are kept once, not per
    row. ``attention_mask`` ([rows, 1, q, own columns], bool) masks the own columns only. Decoding (one query
    per row) reads them once for the whole batch, by one matmul per kv head over all rows' queries; longer
    queries run sdpa over the shared columns broadcast to every row, one layer at a time.
    """
    shared_k, shared_v = shared_prefix[module.layer_idx]
    rows, heads, q, dim = query.shape
    kv_heads, shared_len = key.shape[1], shared_k.shape[2]
    if q > 1:
        keys = torch.cat([shared_k.expand(rows, -1, -1, -1), key], dim=2)
        values = torch.cat([shared_v.expand(rows, -1, -1, -1), value], dim=2)
        mask = torch.cat([attention_mask.new_ones(1, 1, 1, shared_len).expand(rows, 1, q, -1),
                          attention_mask.expand(rows, 1, q, -1)], dim=-1)
        return sdpa_attention_forward(module, query, keys, values, mask, dropout=dropout, scaling=scaling, **kwargs)
    groups, scale = heads // kv_heads, dim**-0.5 if scaling is None else scaling
    queries = query.reshape(rows, kv_heads, groups, dim)  # a kv head's query heads together
    by_head = queries.transpose(0, 1).reshape(kv_heads, rows * groups, dim)
    shared = torch.matmul(by_head, shared_k[0].transpose(1, 2)).view(kv_heads, rows, groups, shared_len).transpose(0, 1)
    own = torch.matmul(queries, key.transpose(2, 3)).masked_fill(~attention_mask.expand(rows, 1, 1, -1), float("-inf"))
    weights = torch.softmax(torch.cat([shared, own], dim=-1) * scale, dim=-1, dtype=torch.float32).to(value.dtype)
    shared_w = weights[..., :shared_len].transpose(0, 1).reshape(kv_heads, rows * groups, shared_len)
    out = torch.matmul(weights[..., shared_len:], value)
    out = out + torch.matmul(shared_w, shared_v[0]).view(kv_heads, rows, groups, dim).transpose(0, 1)
    return out.reshape(rows, 1, heads, dim), None


def _full_mask(*args, **kwargs):
    # sdpa's mask, never skipped for ``is_causal``: the shared columns make the own ones non-square
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(SHARED_PREFIX_ATTENTION, shared_prefix_attention)
AttentionMaskInterface.register(SHARED_PREFIX_ATTENTION, _full_mask)


@contextmanager
def attention_implementation(config, implementation: str):
    previous = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = previous


class SlabLayer(DynamicLayer):
    """One layer's KV in a buffer preallocated to the batch's final length: appending writes in place, so
    decoding n tokens copies O(n) instead of DynamicLayer's O(n^2) concatenations."""

    def __init__(self, rows: int, capacity: int):
        super().__init__()
        self.rows, self.capacity, self.length = rows, capacity, 0
        self._k = self._v = None

    def _allocate(self, k: torch.Tensor, v: torch.Tensor) -> None:
        # zeros, not empty: a masked column still multiplies its (zero) attention weight by its value,
        # and uninitialised memory may hold NaN
        self._k = k.new_zeros(self.rows, k.shape[1], self.capacity, k.shape[3])
        self._v = v.new_zeros(self.rows, v.shape[1], self.capacity, v.shape[3])
        self.device, self.is_initialized = k.device, True

    def put(self, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Copy a one-row prefix [1, heads, n, dim] to the start of ``row``; the source is only read."""
        if self._k is None:
            self._allocate(keys, values)
        self._k[row, :, : keys.shape[-2]] = keys[0]
        self._v[row, :, : values.shape[-2]] = values[0]

    def open(self, length: int) -> None:
        """Expose the first ``length`` columns (a row's unwritten ones are masked by the caller)."""
        if length > self.capacity:
            raise RuntimeError(f"KV slab overflow: {length} > {self.capacity} tokens")
        self.length = length
        if self._k is not None:
            self.keys, self.values = self._k[:, :, :length], self._v[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        if self._k is None:
            self._allocate(key_states, value_states)
        start = self.length
        self.open(start + key_states.shape[-2])
        self._k[:, :, start : self.length] = key_states
        self._v[:, :, start : self.length] = value_states
        return self.keys, self.values

    @staticmethod
    def stack(parts: list[SlabLayer], capacity: int) -> SlabLayer:
        """One slab holding the rows of ``parts`` in order, each row's columns where they were."""
        new = SlabLayer(sum(p.rows for p in parts), capacity)
        new._allocate(parts[0]._k, parts[0]._v)
        start = 0
        for p in parts:
            new._k[start : start + p.rows, :, : p.length] = p.keys
            new._v[start : start + p.rows, :, : p.length] = p.values
            start += p.rows
        new.open(max(p.length for p in parts))
        return new

    def select(self, rows: torch.Tensor, capacity: int) -> SlabLayer:
        """A new slab holding copies of ``rows``, with room for ``capacity`` tokens."""
        new = SlabLayer(len(rows), capacity)
        if self._k is not None:
            new._allocate(self._k, self._v)
            new._k[:, :, : self.length] = self.keys[rows]
            new._v[:, :, : self.length] = self.values[rows]
        new.open(self.length)
        return new


class Rows:
    """A batch of sequences extended together: the prefix all rows share (read-only, per-layer KV or None),
    each row's own cache and its 2D padding mask, next position ids, and the task each row is metered to.

    The mask lives in a buffer as wide as the slab, so appending a decoded column writes in place instead of
    concatenating a copy of the whole mask every step."""

    def __init__(self, shared, layers: list[SlabLayer], mask: torch.Tensor, next_pos: torch.Tensor, tasks: list[str]):
        self.shared, self.cache = shared, Cache(layers=layers)
        self.next_pos, self.tasks = next_pos, tasks
        capacity = max([layer.capacity for layer in layers] + [mask.shape[1]])
        self._mask = mask.new_zeros(mask.shape[0], capacity)
        self._mask[:, : mask.shape[1]] = mask
        self.width = mask.shape[1]

    @property
    def mask(self) -> torch.Tensor:
        return self._mask[:, : self.width]

    def append_mask(self, new: torch.Tensor | None = None, n: int = 1) -> None:
        """Open ``new``'s columns ([rows, n]; all ones when None) after the current ones."""
        n = n if new is None else new.shape[1]
        if self.width + n > self._mask.shape[1]:
            raise RuntimeError(f"mask overflow: {self.width + n} > {self._mask.shape[1]} columns")
        self._mask[:, self.width : self.width + n] = 1 if new is None else new
        self.width += n

    def select(self, rows: Sequence[int], extra: int) -> Rows:
        idx = torch.tensor(rows, device=self._mask.device)
        cap = self.width + extra
        return Rows(self.shared, [layer.select(idx, cap) for layer in self.cache.layers], self.mask[idx],
                    self.next_pos[idx], [self.tasks[r] for r in rows])

    @staticmethod
    def stack(parts: list[Rows], extra: int) -> Rows:
        """One batch of the rows of ``parts`` (which share one prefix), with room for ``extra`` more tokens."""
        if len(parts) == 1:
            return parts[0]
        width = max(p.width for p in parts)
        layers = [SlabLayer.stack(list(same), width + extra) for same in zip(*(p.cache.layers for p in parts))]
        mask = torch.cat([F.pad(p.mask, (0, width - p.width)) for p in parts])
        return Rows(parts[0].shared, layers, mask, torch.cat([p.next_pos for p in parts]), sum((p.tasks for p in parts), []))

    def prefix(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
        """A single unpadded row, shared part included, as a prefix: per-layer (keys, values) and its length."""
        own = [(layer.keys, layer.values) for layer in self.cache.layers]
        if self.shared:
            own = [(torch.cat([sk, k], dim=2), torch.cat([sv, v], dim=2)) for (sk, sv), (k, v) in zip(self.shared, own)]
        return own, int(self.next_pos[0])
