"""How a Hugging Face checkpoint holds our weights: the tensor-name table (almost the identity,
because our layer names follow HF's), which tensors are transposed (PyTorch linear weights are
`[out, in]`, Keras `Dense` kernels `[in, out]`), and the numpy dtype of a Keras dtype."""

from typing import Any

import keras
import ml_dtypes
import numpy as np

from tf_mistral.config import MistralConfig


def numpy_dtype(name: Any) -> np.dtype:
    """numpy dtype for a Keras dtype name; bfloat16 comes from ml_dtypes."""
    name = keras.backend.standardize_dtype(name)
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def checkpoint_table(model: keras.Model) -> dict[str, tuple[keras.layers.Layer, str, bool]]:
    """Maps each HF tensor name to `(layer, attribute, transposed)` for `model`, a head or the
    bare decoder (`TFMistralModel`), which uses the names HF's `MistralModel` writes (no `model.`
    prefix). `transposed`: HF stores the tensor `[out, in]`, the
    Keras kernel is `[in, out]`.
    """
    backbone = model._backbone()
    prefix = "" if backbone is model else "model."
    table = {
        f"{prefix}embed_tokens.weight": (backbone.embed_tokens, "embeddings", False),
        f"{prefix}norm.weight": (backbone.norm, "weight", False),
    }
    for i, layer in enumerate(backbone.decoder_layers):
        name = f"{prefix}layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            table[f"{name}.self_attn.{proj}.weight"] = (getattr(layer.self_attn, proj), "kernel", True)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            table[f"{name}.mlp.{proj}.weight"] = (getattr(layer.mlp, proj), "kernel", True)
        table[f"{name}.input_layernorm.weight"] = (layer.input_layernorm, "weight", False)
        table[f"{name}.post_attention_layernorm.weight"] = (layer.post_attention_layernorm, "weight", False)
    for head in ("lm_head", "score"):
        dense = getattr(model, head, None)
        if isinstance(dense, keras.layers.Layer):  # a causal LM's score() is a method, not a head
            table[f"{head}.weight"] = (dense, "kernel", True)
            if dense.use_bias:
                table[f"{head}.bias"] = (dense, "bias", False)
    return table


def shape_hint(name: str, file_shape: tuple[int, ...], config: MistralConfig) -> str:
    """What a tensor `name` of `file_shape` that does not fit the model most likely means."""
    if ".k_proj." in name or ".v_proj." in name:
        heads = file_shape[0] / config.head_dim
        return (f"checkpoint has {heads:g} kv heads of {config.head_dim} but config says "
                f"{config.num_key_value_heads}: is config.json from another model?")
    if "embed_tokens" in name or name == "lm_head.weight":
        return f"checkpoint vocabulary is {file_shape[0]} but config says {config.vocab_size}"
    if name.startswith("score."):
        return (f"the checkpoint's head has {file_shape[0]} labels but num_labels is {config.num_labels}: "
                "pass ignore_mismatched_sizes=True to re-initialise the head")
    return "is config.json from another model?"
