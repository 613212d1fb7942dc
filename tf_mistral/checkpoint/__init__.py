"""Hugging Face safetensors checkpoints <-> Keras variables.

    layout.py    the HF tensor-name table, transposes, numpy dtypes
    loading.py   load_weights: streamed, checked, into float or Keras int8 variables
    saving.py    save_weights: HF layout, LoRA merged, written atomically
"""

from tf_mistral.checkpoint.layout import checkpoint_table, numpy_dtype
from tf_mistral.checkpoint.loading import load_weights
from tf_mistral.checkpoint.saving import merged_kernel, save_weights

__all__ = ["checkpoint_table", "load_weights", "merged_kernel", "numpy_dtype", "save_weights"]
