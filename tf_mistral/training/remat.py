"""Rematerialization (gradient checkpointing) of the decoder layers.

`rematerialize(model)` makes each decoder layer keep only its input for the backward pass and
recompute its activations there (`tf.recompute_grad`): activation memory drops from every layer's
intermediates (attention probabilities `[batch, heads, seq, seq]` float32, the MLP's
`[batch, seq, intermediate]` tensors, ...) to one hidden state per layer, for about one extra
forward pass of compute. Gradients are unchanged (up to float rounding).

Why not `keras.RematScope`: on the TensorFlow backend Keras rematerializes a layer through
`tf.recompute_grad`, which takes no keyword arguments in graph mode and no `None` outputs; our
decoder layers take `cache=` and return `(hidden, None)` without a cache, so
`RematScope(mode="full")` fails on them. `RematScope(mode="list_of_layers", layer_names=["mlp"])`
around model construction does work (the MLPs take one positional input), which covers the MLP
activations only.
"""

import keras
import tensorflow as tf


def rematerialize(model: keras.Model) -> keras.Model:
    """Recompute every decoder layer's activations in the backward pass. Returns the model.

    The model keeps its whole `call` (labels, output_hidden_states, ...): a layer recomputes in
    the plain full-sequence forward; a call that needs more of a layer than its output (a KV
    cache: `generate`, `past_key_values` / `use_cache`; `output_attentions`) runs it as before.
    """
    backbone = model._backbone()
    for layer in backbone.decoder_layers:
        if getattr(layer, "_tf_mistral_remat", False):
            continue
        # Keras' public `RematScope` applies to layers created inside it, and to each of their
        # calls; this wraps the layers of an already built (loaded) model, and only their
        # full-sequence call. tests/test_training.py checks the gradients equal the plain ones.
        layer.call = _recomputed(layer.call)
        layer._tf_mistral_remat = True
    return model


def _recomputed(call):
    def remat_call(x, cos, sin, mask, cache=None, cache_start=None, last_only=False, **hf_arguments):
        # `hf_arguments` (`past`, `output_attentions`) reach a layer only when a call uses them
        if cache is not None or last_only or hf_arguments:
            return call(x, cos, sin, mask, cache=cache, cache_start=cache_start, last_only=last_only, **hf_arguments)
        layer_output = tf.recompute_grad(lambda x, cos, sin: call(x, cos, sin, mask)[0])
        return layer_output(x, cos, sin), None

    return remat_call
