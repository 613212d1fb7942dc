"""Keras layers of the Mistral decoder, written with `keras.ops` (TensorFlow and JAX backends)."""

from tf_mistral.layers.attention import MistralAttention
from tf_mistral.layers.decoder_block import MistralDecoderLayer
from tf_mistral.layers.mlp import MistralMLP
from tf_mistral.layers.rms_norm import MistralRMSNorm
from tf_mistral.layers.rotary import RotaryEmbedding, apply_rotary_embedding

__all__ = [
    "MistralAttention", "MistralDecoderLayer", "MistralMLP", "MistralRMSNorm", "RotaryEmbedding",
    "apply_rotary_embedding",
]
