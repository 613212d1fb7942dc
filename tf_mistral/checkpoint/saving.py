"""Saving a Keras model as a Hugging Face safetensors checkpoint (`config.json` last), through
`safetensors_io.write_checkpoint`, which never leaves a mix of an old and a new checkpoint. LoRA
adapters are merged into their kernels (a plain HF checkpoint); a quantized model is refused."""

import dataclasses
import os
from typing import Any

import keras
from keras import ops
import numpy as np

from tf_mistral.arguments import parse_size
from tf_mistral.checkpoint.layout import checkpoint_table, numpy_dtype
from tf_mistral.keras_internals import all_layers, kernel_variable
from tf_mistral.safetensors_io import TensorEntry, write_checkpoint

_CHECKPOINT_DTYPES = ("float32", "bfloat16", "float16")


def merged_kernel(dense: keras.layers.Dense) -> Any:
    """`kernel + (alpha / r) * A @ B` of a LoRA-enabled `Dense`, computed in float32, in the kernel
    variable's dtype `[in, out]`. (Keras' `Dense.kernel` returns the merge in the compute dtype,
    bf16 under mixed precision.)"""
    delta = (dense.lora_alpha / dense.lora_rank) * ops.matmul(dense.lora_kernel_a, dense.lora_kernel_b)
    kernel = kernel_variable(dense)
    return ops.cast(ops.cast(kernel, "float32") + delta, kernel.dtype)


def _saved_value(layer, attribute):
    """What `save_weights` writes for one attribute: a LoRA-enabled kernel merged in float32."""
    if attribute == "kernel" and getattr(layer, "lora_enabled", False):
        return merged_kernel(layer)
    return getattr(layer, attribute)


def save_weights(
    model: keras.Model, directory: str | os.PathLike, max_shard_size: int | str = "5GB",
    dtype: str | None = None, progress: bool = True,
) -> None:
    """Writes the weights in HF layout, then `config.json` (see `MistralPreTrainedModel.save_pretrained`).

    Everything is checked before the folder is touched: a quantized model, a `dtype` other than
    float32 / bfloat16 / float16, a `max_shard_size` that is not a size."""
    for layer in all_layers(model):
        if getattr(layer, "quantization_mode", None):
            raise ValueError(
                "save_pretrained writes floating-point HF checkpoints; this model is quantized "
                f"({layer.name}: {layer.quantization_mode}). Save the float model before quantize(), "
                "or export the quantized model with `tf-mistral export tflite --quantize int8`."
            )
    if dtype is not None and keras.backend.standardize_dtype(dtype) not in _CHECKPOINT_DTYPES:
        raise ValueError(
            f"a checkpoint holds float32, bfloat16 or float16 weights, not {dtype!r}; for int8 or int4, "
            "quantize() after loading, or export with `tf-mistral export tflite --quantize int8`"
        )
    parse_size(max_shard_size)
    target = None if dtype is None else numpy_dtype(dtype)
    entries = []
    for name, (layer, attribute, transposed) in checkpoint_table(model).items():
        value = _saved_value(layer, attribute)
        out_dtype = target or numpy_dtype(value.dtype)
        shape = tuple(value.shape)[::-1] if transposed else tuple(value.shape)

        def fetch(layer=layer, attribute=attribute, transposed=transposed, out_dtype=out_dtype):
            array = keras.ops.convert_to_numpy(_saved_value(layer, attribute))
            return np.ascontiguousarray(array.T if transposed else array, dtype=out_dtype)

        entries.append(TensorEntry(name, out_dtype, shape, fetch))
    write_checkpoint(directory, entries, max_shard_size=max_shard_size, progress=progress)
    saved_dtype = keras.backend.standardize_dtype(entries[0].dtype.name)
    config = dataclasses.replace(model.config, torch_dtype=saved_dtype)
    config.save(directory, architecture=model.hf_architecture)
