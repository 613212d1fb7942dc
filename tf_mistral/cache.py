"""The fixed-size KV cache: one K and one V tensor per layer, a ring buffer under a sliding window.

Layout (shared by `generate`, the SavedModel and the TFLite signatures, which is the layout
LiteRT-LM reads):
    K: `[batch, kv_heads, cache_length, head_dim]`
    V: `[batch, kv_heads, head_dim, cache_length]`
Position p lives in slot `p % cache_length`. The cache holds no positions: a forward that starts
at position `start` knows that every slot holds the newest position before `start` congruent to
it (`slot_positions`), and a negative position marks a slot never written. Positions here count
columns of the (left-padded) batch; padding is masked by each row's `pad_start`.
"""

from typing import Any

from keras import ops

from tf_mistral.config import MistralConfig

# How `write` stores a 1-token chunk, chosen by whoever traces the graph (`cache_writes=`):
# SLICE_WRITES: `slice_update`, TFLite's DYNAMIC_UPDATE_SLICE (in place) and XLA's fast path.
# SCATTER_WRITES: a scatter (`TensorScatterUpdate`), for graphs run without XLA (the default
#   SavedModel, `generate(jit_compile=False)`): on the TensorFlow backend `slice_update` is the
#   XLA op `XlaDynamicUpdateSlice`, which outside XLA runs only by compiling that op on the spot,
#   and which stock TF Serving cannot run.
SLICE_WRITES, SCATTER_WRITES = "slice", "scatter"
CACHE_WRITES = (SLICE_WRITES, SCATTER_WRITES)


def cache_length(max_length: int, sliding_window: int | None) -> int:
    """Slots needed: the window when there is one (a rolling buffer), else `max_length`."""
    if sliding_window is None:
        return int(max_length)
    return int(min(max_length, sliding_window))


def empty_cache(config: MistralConfig, batch_size: Any, length: Any, dtype: str) -> list[tuple[Any, Any]]:
    """A list of `num_hidden_layers` pairs `(K, V)` of zeros in the layout above."""
    k_shape = (batch_size, config.num_key_value_heads, length, config.head_dim)
    v_shape = (batch_size, config.num_key_value_heads, config.head_dim, length)
    return [
        (ops.zeros(k_shape, dtype=dtype), ops.zeros(v_shape, dtype=dtype))
        for _ in range(config.num_hidden_layers)
    ]


def slot_positions(start: Any, length: Any) -> Any:
    """int32 `[length]`: the position each slot holds before writing at `start` (< 0: empty)."""
    last = ops.cast(start, "int32") - 1
    slots = ops.arange(length, dtype="int32")
    return last - ops.mod(last - slots, length)


def writes_first(seq: int | None) -> bool:
    """Whether a chunk of `seq` tokens (a static int, or None) is written before it attends.

    A single token (a decode step) is: it then attends to the updated cache alone, so the old
    cache has one reader, the write, and XLA updates it in place inside the decode loop. A longer
    chunk may overwrite slots its own first tokens still need, so it attends to the cache as it
    was, followed by itself, and is written afterwards.
    """
    return seq == 1


def key_positions(query_positions: Any, length: Any) -> Any:
    """int32 keys: the position of each key that a chunk at `query_positions` attends to.

    Args:
        query_positions: int32 `[seq]`, consecutive, the chunk's positions.
        length: slots in the cache.

    Returns:
        `[length]` (the slots after the write) when `writes_first(seq)`, else `[length + seq]`
        (the slots before the write, then the chunk). Negative: an empty slot.
    """
    start = query_positions[0]
    if writes_first(query_positions.shape[0]):
        return slot_positions(start + 1, length)
    return ops.concatenate([slot_positions(start, length), query_positions], axis=0)


def write(
    k_cache: Any, v_cache: Any, k_new: Any, v_new: Any, start: Any, cache_writes: str = SLICE_WRITES
) -> tuple[Any, Any]:
    """Writes a chunk of keys/values for positions `start .. start + seq - 1`.

    Args:
        k_cache: `[batch, kv_heads, length, head_dim]`.
        v_cache: `[batch, kv_heads, head_dim, length]`.
        k_new: `[batch, kv_heads, seq, head_dim]`, same dtype.
        v_new: `[batch, kv_heads, head_dim, seq]`.
        start: int32 scalar, position of the chunk's first entry.
        cache_writes: `SLICE_WRITES` or `SCATTER_WRITES`, how a 1-token chunk is written.

    Returns:
        The updated `(k_cache, v_cache)`. Only the chunk's last `length` entries are kept.
        A single step is one `slice_update` (TFLite DYNAMIC_UPDATE_SLICE), or with
        `SCATTER_WRITES` one scatter; a longer chunk may wrap around the ring, so it is a gather
        of the chunk and a select per slot.
    """
    length = ops.shape(k_cache)[2]  # an int, or a scalar tensor for a cache of dynamic length
    seq = k_new.shape[2]
    start = ops.cast(start, "int32")
    if seq == 1:
        slot = ops.mod(start, length)
        if cache_writes not in CACHE_WRITES:
            raise ValueError(f"cache_writes must be one of {CACHE_WRITES}, got {cache_writes!r}")
        if cache_writes == SCATTER_WRITES:
            return _scatter_into_slot(k_cache, k_new, slot, 2), _scatter_into_slot(v_cache, v_new, slot, 3)
        zero = ops.zeros((), dtype="int32")
        k_cache = ops.slice_update(k_cache, [zero, zero, slot, zero], k_new)
        v_cache = ops.slice_update(v_cache, [zero, zero, zero, slot], v_new)
        return k_cache, v_cache
    if seq is None:  # traced with a dynamic chunk length
        seq = ops.shape(k_new)[2]
    # Slot s receives the chunk's newest position congruent to s, if the chunk reaches it.
    newest = slot_positions(start + seq, length)
    written = newest >= start
    source = ops.clip(newest - start, 0, seq - 1)
    k_cache = ops.where(written[:, None], ops.take(k_new, source, axis=2), k_cache)
    v_cache = ops.where(written, ops.take(v_new, source, axis=3), v_cache)
    return k_cache, v_cache


def _scatter_into_slot(cache, new, slot, slot_axis):
    """`cache` with `new` written at index `slot` of `slot_axis` (where `new` has size 1).

    One index per element of the axes before `slot_axis` (batch and kv heads, and for V the
    head dim): `[batch * kv_heads, 3]` for K (each index takes a `head_dim` row), `[batch *
    kv_heads * head_dim, 4]` for V (each takes a scalar).
    """
    shape = ops.shape(cache)
    grids = ops.meshgrid(*[ops.arange(shape[axis], dtype="int32") for axis in range(slot_axis)], indexing="ij")
    columns = [ops.reshape(grid, (-1,)) for grid in grids]
    columns.append(ops.full_like(columns[0], slot))
    updates = ops.reshape(new, (-1, *cache.shape[slot_axis + 1:]))
    return ops.scatter_update(cache, ops.stack(columns, axis=1), updates)
