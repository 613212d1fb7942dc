"""The shapes of a generation request, shared by Keras `generate` and the SavedModel.

A request's prompt is padded on the left to `prompt_bucket` columns where shapes must be static
(XLA), its output buffer is `new_tokens_bucket` wide, and its KV cache has `cache_length` slots:
the smallest bucket that holds every position the request writes, capped by the sliding window
(the cache is then a ring buffer) and by the longest cache an export allows.

Each function takes Python ints (Keras `generate` keys its traced loops on them) or int32 scalar
tensors (the SavedModel picks the shapes of each request inside its graph).
"""

import numpy as np
import tensorflow as tf

from tf_mistral import cache as kv_cache


def _smallest(length, sizes, multiple):
    """The first of the ascending `sizes` that is >= `length`, else `length` rounded up to a
    multiple of `multiple`."""
    rounded = (length + multiple - 1) // multiple * multiple
    if isinstance(length, (int, np.integer)):
        return int(next((size for size in sizes if length <= size), rounded))
    for size in reversed(sizes):
        rounded = tf.where(length <= size, size, rounded)
    return rounded


def prompt_bucket(length: int | tf.Tensor) -> int | tf.Tensor:
    """Columns a prompt of `length` tokens is padded to: 16, 32, 64, then multiples of 64."""
    return _smallest(length, (16, 32, 64), 64)


def new_tokens_bucket(count: int | tf.Tensor) -> int | tf.Tensor:
    """Output buffer for `count` new tokens: 32, 64, 128, then multiples of 128."""
    return _smallest(count, (32, 64, 128), 128)


def cache_length(
    positions: int | tf.Tensor, sliding_window: int | None, max_length: int | None = None
) -> int | tf.Tensor:
    """Slots of a request's KV cache.

    Args:
        positions: the positions the request writes: its prompt columns + new tokens - 1 (the
            last new token is never fed back).
        sliding_window: the model's window (int or None).
        max_length: an export's most positions per row (int or None: no cap).

    Returns:
        `prompt_bucket(positions)` (16, 32, 64, then multiples of 64), at most
        `min(max_length, sliding_window)`: a Python int for an int, else an int32 scalar tensor.
    """
    slots = prompt_bucket(positions)
    limit = sliding_window if max_length is None else kv_cache.cache_length(max_length, sliding_window)
    if limit is None:
        return slots
    return min(slots, limit) if isinstance(slots, int) else tf.minimum(slots, limit)
