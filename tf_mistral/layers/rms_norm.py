"""RMSNorm as HF computes it: normalise in float32, cast back, then scale."""

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tf_mistral")
class MistralRMSNorm(keras.layers.Layer):
    """`weight * cast(x * rsqrt(mean(x^2) + eps), input_dtype)` over the last axis.

    Input and output `[..., hidden]` in the compute dtype; the statistics are float32.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.weight = self.add_weight(name="weight", shape=(input_shape[-1],), initializer="ones")

    def call(self, x: Any) -> Any:
        h = ops.cast(x, "float32")
        h = h * ops.rsqrt(ops.mean(ops.square(h), axis=-1, keepdims=True) + self.epsilon)
        return ops.cast(self.weight, self.compute_dtype) * ops.cast(h, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}
