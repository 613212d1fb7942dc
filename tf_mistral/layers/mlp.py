"""Gated feed-forward: `down_proj(act(gate_proj(x)) * up_proj(x))`, no biases; act is silu in
every released Mistral (SwiGLU)."""

from typing import Any

import keras

from tf_mistral.layers.activations import activation


@keras.saving.register_keras_serializable(package="tf_mistral")
class MistralMLP(keras.layers.Layer):
    """`[batch, seq, hidden]` -> `[batch, seq, hidden]` through `intermediate_size` units."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.act_fn = activation(hidden_act)
        dense = dict(use_bias=False, dtype=self.dtype_policy)
        self.gate_proj = keras.layers.Dense(intermediate_size, name="gate_proj", **dense)
        self.up_proj = keras.layers.Dense(intermediate_size, name="up_proj", **dense)
        self.down_proj = keras.layers.Dense(hidden_size, name="down_proj", **dense)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.gate_proj.build(input_shape)
        self.up_proj.build(input_shape)
        self.down_proj.build((*input_shape[:-1], self.intermediate_size))

    def call(self, x: Any) -> Any:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
        }
