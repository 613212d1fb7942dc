"""The private Keras APIs tf_mistral uses, in one place, each because Keras 3 has no public way;
`tests/test_private_apis.py` fails loudly when a Keras release changes one. (The other private
uses: `keras.src.tree.register_tree_node_class` in models/outputs.py, TensorFlow's
`dataset_ops.UnaryUnchangedStructureDataset` in training/data.py and the TFLite converter's
`_experimental_use_buffer_offset` in export/tflite.py, each commented where it is used.)"""

import keras


def all_layers(model: keras.layers.Layer, include_self: bool = True) -> list:
    """Every layer of `model`, nested ones included, `model` first when `include_self`.
    (`Model.layers` lists the top level only; `_flatten_layers` is the walk `Model.quantize` uses.)"""
    return list(model._flatten_layers(include_self=include_self, recursive=True))


def kernel_variable(dense: keras.layers.Dense) -> keras.Variable:
    """The variable behind `Dense.kernel`, `[in, out]` (int8 in a quantized layer). `Dense.kernel`
    returns `kernel + A @ B` when LoRA is enabled, in the compute dtype; Keras keeps the variable
    itself in `_kernel`."""
    return dense._kernel


def embeddings_variable(embedding: keras.layers.Embedding) -> keras.Variable:
    """The variable behind `Embedding.embeddings`, `[vocab, hidden]` (int8 in a quantized layer)."""
    return embedding._embeddings
