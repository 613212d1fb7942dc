"""The causal / sliding-window attention mask, built once per forward and shared by every layer.

A query at position q sees a key at position k when `k <= q`, `q - k < sliding_window` (exactly
`sliding_window` keys, itself included; no limit when the window is None) and the key is valid
(not padding, not an empty cache slot).
"""

from typing import Any

from keras import ops


def band_mask(query_positions: Any, key_positions: Any, key_valid: Any, sliding_window: int | None) -> Any:
    """Which keys each query may attend to.

    Args:
        query_positions: int32 `[seq]`, the position of each query.
        key_positions: int32 `[keys]`, the position of each key.
        key_valid: bool `[batch, keys]`, False for padding and empty cache slots.
        sliding_window: int or None.

    Returns:
        bool `[batch, 1, 1, seq, keys]`, broadcastable against scores
        `[batch, kv_heads, groups, seq, keys]`.
    """
    q = query_positions[:, None]
    k = key_positions[None, :]
    allowed = k <= q
    if sliding_window is not None:
        allowed = ops.logical_and(allowed, q - k < sliding_window)
    mask = ops.logical_and(allowed[None], key_valid[:, None, :])
    return mask[:, None, None]
