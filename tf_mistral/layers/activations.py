"""The `hidden_act` functions of HF's `ACT2FN` that a Mistral MLP may use, by their HF names
(`config.HIDDEN_ACTS` lists the same names for validation without importing Keras)."""

from collections.abc import Callable
from typing import Any

from keras import ops


def _quick_gelu(x):
    return x * ops.sigmoid(1.702 * x)


ACTIVATIONS = {
    "silu": ops.silu,
    "swish": ops.silu,
    "gelu": lambda x: ops.gelu(x, approximate=False),  # erf, as torch's default
    "gelu_new": lambda x: ops.gelu(x, approximate=True),  # tanh approximation
    "gelu_pytorch_tanh": lambda x: ops.gelu(x, approximate=True),
    "gelu_fast": lambda x: ops.gelu(x, approximate=True),
    "quick_gelu": _quick_gelu,
    "relu": ops.relu,
    "tanh": ops.tanh,
}


def activation(name: str) -> Callable[[Any], Any]:
    """The function HF's `ACT2FN[name]` computes, applied element-wise in the input's dtype."""
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act {name!r} is not supported; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
