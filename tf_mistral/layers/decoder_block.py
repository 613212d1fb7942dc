"""One decoder layer: `x += attn(input_layernorm(x)); x += mlp(post_attention_layernorm(x))`."""

from typing import Any

import keras

from tf_mistral import cache as kv_cache
from tf_mistral.layers.attention import MistralAttention
from tf_mistral.layers.mlp import MistralMLP
from tf_mistral.layers.rms_norm import MistralRMSNorm


@keras.saving.register_keras_serializable(package="tf_mistral")
class MistralDecoderLayer(keras.layers.Layer):
    """Pre-norm residual block; sublayer names follow the HF checkpoint."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_attention_heads: int,
        num_key_value_heads: int,
        head_dim: int,
        rms_norm_eps: float,
        hidden_act: str = "silu",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.rms_norm_eps = rms_norm_eps
        self.hidden_act = hidden_act
        policy = self.dtype_policy
        self.input_layernorm = MistralRMSNorm(rms_norm_eps, name="input_layernorm", dtype=policy)
        self.self_attn = MistralAttention(
            hidden_size, num_attention_heads, num_key_value_heads, head_dim,
            name="self_attn", dtype=policy,
        )
        self.post_attention_layernorm = MistralRMSNorm(
            rms_norm_eps, name="post_attention_layernorm", dtype=policy
        )
        self.mlp = MistralMLP(hidden_size, intermediate_size, hidden_act, name="mlp", dtype=policy)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        for sublayer in (self.input_layernorm, self.self_attn, self.post_attention_layernorm, self.mlp):
            sublayer.build(input_shape)

    def call(
        self, x: Any, cos: Any, sin: Any, mask: Any, cache: tuple[Any, Any] | None = None, cache_start: Any = None,
        last_only: bool = False, past: tuple[Any, Any] | None = None, output_attentions: bool = False,
        cache_writes: str = kv_cache.SLICE_WRITES,
    ) -> tuple[Any, ...]:
        """`x [batch, seq, hidden]` -> `(x', new_cache)`, x' `[batch, 1, hidden]` for the last
        token alone when `last_only`, plus the attention probabilities when `output_attentions`;
        see `MistralAttention.call`."""
        attended, new_cache, *probs = self.self_attn(
            self.input_layernorm(x), cos, sin, mask, cache=cache, cache_start=cache_start, last_only=last_only,
            past=past, output_attentions=output_attentions, cache_writes=cache_writes,
        )
        x = (x[:, -1:] if last_only else x) + attended
        x = x + self.mlp(self.post_attention_layernorm(x))
        return (x, new_cache, *probs)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": self.hidden_act,
        }
