"""Keras int8 weights made while a checkpoint loads: `from_pretrained(path, quantize="int8")`.

Keras' `model.quantize("int8")` replaces the float kernel of each `Dense` (`[in, out]`) and the
float matrix of each `Embedding` (`[vocab, hidden]`) of a built model with an int8 variable and a
float scale per output column (per token row for the embeddings), so the float model has to be
in memory first. Here those layers are built int8 from the start, with the dtype policy
(`int8_from_<policy>`) and `Int8QuantizationConfig` that `quantize("int8")` leaves on them, and
the loader quantizes each block of checkpoint rows with the layer's own Keras quantizer as it
reads it (`Int8Target`). A row of a checkpoint tensor (HF `[out, in]`, embeddings `[vocab, hidden]`)
is one output column of the kernel (one token of the embeddings): a block of rows quantizes to
exactly the values and scales that Keras computes over the whole tensor. The model is therefore
the one `quantize("int8")` gives, variable for variable, and no float copy of it ever exists.
"""

from typing import Any

import keras
from keras import ops
from keras.quantizers import AbsMaxQuantizer, Int8QuantizationConfig, QuantizationConfig
import numpy as np

from tf_mistral.keras_internals import all_layers, embeddings_variable, kernel_variable

QUANTIZE_MODES = ("int8",)
# Keras' default weight quantizer per layer type: the axis reduced to one scale (`Dense.quantize`,
# `Embedding.quantize`), in the variable's own orientation.
_WEIGHT_AXES = {keras.layers.Dense: 0, keras.layers.Embedding: -1}


def check_mode(quantize: str | None, compute_dtype: str) -> None:
    """Raises ValueError unless `quantize` is None or a mode loading can make for a model that
    computes in `compute_dtype`."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"quantize={quantize!r} cannot be applied while loading; choose one of {QUANTIZE_MODES}, or load the "
            f"float model and call Keras' model.quantize({quantize!r})"
        )
    if compute_dtype == "float16":
        raise ValueError(
            "int8 does not work well with float16 compute (Keras refuses it): load with dtype='bfloat16' or "
            "'mixed_bfloat16' to quantize"
        )


def quantize_when_built(model: keras.Model, mode: str) -> None:
    """Gives each `Dense` and `Embedding` of the unbuilt `model` the int8 dtype policy and config
    that Keras' `quantize(mode)` would set, so that `build()` creates their int8 variables (zeros,
    scales of one) and never a float kernel."""
    config = Int8QuantizationConfig()  # what Model.quantize("int8") resolves the mode to
    for layer in all_layers(model):
        if type(layer) in _WEIGHT_AXES:  # exactly the classes whose quantize() Keras calls
            layer.quantization_config = config
            layer.dtype_policy = f"{mode}_from_{layer.dtype_policy.name}"


class Int8Target:
    """Where a float checkpoint tensor goes in a Keras int8 layer, and how its rows are quantized.

    Attributes:
        values: the int8 variable (`Dense._kernel [in, out]`, `Embedding._embeddings [vocab, hidden]`).
        scale: the float scale variable `[out]` / `[vocab]`, the layer's variable dtype.
        float_dtype: the layer's variable dtype, in which Keras would have held the float weights.
    """

    def __init__(self, layer: keras.layers.Dense | keras.layers.Embedding) -> None:
        self.values = kernel_variable(layer) if isinstance(layer, keras.layers.Dense) else embeddings_variable(layer)
        self.scale = layer.kernel_scale if isinstance(layer, keras.layers.Dense) else layer.embeddings_scale
        self.float_dtype = layer.variable_dtype
        self._quantizer = QuantizationConfig.weight_quantizer_or_default(
            layer.quantization_config, AbsMaxQuantizer(axis=_WEIGHT_AXES[type(layer)])
        )

    @classmethod
    def of(cls, layer: keras.layers.Layer, attribute: str) -> "Int8Target | None":
        """The target of `layer.<attribute>` when it is a Keras int8 kernel or embedding matrix, else None."""
        if attribute not in ("kernel", "embeddings") or getattr(layer, "quantization_mode", None) != "int8":
            return None
        return cls(layer)

    def quantize(self, weights: np.ndarray) -> tuple[Any, Any]:
        """`(int8 values, scale)` tensors of float `weights` (numpy, in the variable's orientation, a
        block of whole output columns or token rows): Keras' quantizer, computed on the CPU in numpy
        as `quantize()` does; the scale has one entry per column / row."""
        values, scale = self._quantizer(weights, to_numpy=True)
        return values, ops.reshape(scale, (-1,))
