"""Rotary position embedding in HF's `rotate_half` layout (HF weights are permuted for it)."""

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tf_mistral")
class RotaryEmbedding(keras.layers.Layer):
    """Maps positions to the `(cos, sin)` tables that `apply_rotary_embedding` uses.

    `inv_freq = 1 / theta^(arange(0, d, 2) / d)` and the angles are float32, as in HF; the
    tables are cast to the compute dtype at the end.
    """

    def __init__(self, head_dim: int, rope_theta: float = 10000.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head_dim = head_dim
        self.rope_theta = rope_theta

    def call(self, position_ids: Any) -> tuple[Any, Any]:
        """position_ids: int `[batch, seq]` -> cos, sin: `[batch, seq, head_dim]` compute dtype."""
        exponent = ops.arange(0, self.head_dim, 2, dtype="float32") / self.head_dim
        inv_freq = 1.0 / ops.power(ops.cast(self.rope_theta, "float32"), exponent)
        angles = ops.cast(position_ids, "float32")[..., None] * inv_freq  # [B, S, d/2]
        angles = ops.concatenate([angles, angles], axis=-1)  # [B, S, d]
        return ops.cast(ops.cos(angles), self.compute_dtype), ops.cast(ops.sin(angles), self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "head_dim": self.head_dim, "rope_theta": self.rope_theta}


def apply_rotary_embedding(x: Any, cos: Any, sin: Any) -> Any:
    """Rotates `x` `[batch, heads..., seq, head_dim]` by `cos`/`sin` `[batch, seq, head_dim]`.

    The tables broadcast over every axis between batch and seq (heads, or kv heads and groups).
    """
    extra_axes = len(x.shape) - 3
    for _ in range(extra_axes):
        cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = ops.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
