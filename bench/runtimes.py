"""One `generate(ids, new_tokens)` per runtime, for the benchmarks that time them side by side
(bench/generate.py, bench/serving.py, bench/scale.py).

Each maker loads a model and returns `generate(ids, new_tokens) -> int32 [batch, prompt + new_tokens]`:
greedy, ids int32 `[batch, prompt]` without padding, end tokens ignored, so that every call makes
exactly `new_tokens` tokens. Frameworks are imported inside the makers: a fresh process that
runs one runtime pays only for its own.
"""

import numpy as np


def hf(folder, dtype, threads=None, resident=False):
    """HF transformers `MistralForCausalLM.generate` (PyTorch). `dtype`: "float32", "bfloat16", or
    "int8" (float32 weights, then `torch.ao.quantization.quantize_dynamic` on every nn.Linear).
    `threads`: `torch.set_num_threads` (None: PyTorch's default). `resident`: read the weights
    into the process's memory (`read_into_memory`), as tf_mistral holds them."""
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)
    model = transformers.MistralForCausalLM.from_pretrained(
        folder, dtype=torch.float32 if dtype == "int8" else getattr(torch, dtype)
    ).eval()
    if resident:
        read_into_memory(model, folder)
    if dtype == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    model.generation_config.eos_token_id = None

    def generate(ids, new_tokens):
        with torch.inference_mode():
            ids = torch.from_numpy(ids).long()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=0)
        return out.numpy()

    return generate


def read_into_memory(model, folder):
    """Replaces each parameter of the HF `model` by the same tensor read from the checkpoint into
    memory. HF's parameters are views of the memory-mapped safetensors files: under memory
    pressure the kernel drops their pages and a forward pass reads them from disk again (a 7B
    model on a 24 GB machine shared with other work), which a benchmark of compute must not time.
    The files are read (not mapped), one tensor at a time, so the peak stays one copy of the weights."""
    import torch

    from tf_mistral.safetensors_io import open_checkpoint

    files = open_checkpoint(folder)
    for name, parameter in model.named_parameters():
        array = files[name].read(name)
        if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16, which torch cannot take
            tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        else:
            tensor = torch.from_numpy(array)
        parameter.data = tensor.to(parameter.dtype)


def keras(folder, dtype, quantize=None, jit_compile=None, threads=None):
    """tf_mistral `TFMistralForCausalLM.generate`: `from_pretrained(dtype=dtype, quantize=quantize)`
    (quantize "int8": Keras int8 layers quantized while loading, the model `quantize("int8")` after
    a float load gives); `jit_compile` as `generate` takes it (None: its default)."""
    import tf_mistral

    tensorflow_threads(threads)
    model = tf_mistral.TFMistralForCausalLM.from_pretrained(folder, dtype=dtype, quantize=quantize, progress=False)

    def generate(ids, new_tokens):
        return model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], pad_token_id=0,
                              jit_compile=jit_compile)

    return generate


def tensorflow_threads(threads):
    """TensorFlow's intra- and inter-op thread pools of `threads` threads each (None: TensorFlow's
    default, one per core); call it before TensorFlow runs its first op."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def saved_model_signatures(path):
    """The serving signatures of the SavedModel at `path`, loaded with only TensorFlow and TF Text
    (what TF Serving has)."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    return tf.saved_model.load(path).signatures


def greedy_knobs(new_tokens):
    """The sampling inputs of a SavedModel request: greedy, `new_tokens` at most."""
    import tensorflow as tf

    return dict(max_new_tokens=tf.constant(new_tokens), temperature=tf.constant(0.0), top_p=tf.constant(1.0),
                top_k=tf.constant(0), seed=tf.constant(0))


def saved_model(path, threads=None):
    """The `generate` signature (ids in, ids out) of a tf_mistral SavedModel. It stops at the
    model's end token, so a call that stops early raises rather than timing fewer tokens."""
    import tensorflow as tf

    tensorflow_threads(threads)
    signature = saved_model_signatures(path)["generate"]

    def generate(ids, new_tokens):
        out = signature(input_ids=tf.constant(ids), attention_mask=tf.ones_like(ids), **greedy_knobs(new_tokens))
        tokens = out["token_ids"].numpy()
        if tokens.shape[1] != new_tokens:
            raise RuntimeError(f"the SavedModel made {tokens.shape[1]} tokens, not {new_tokens}: it met its end "
                               "token; time another prompt")
        return np.concatenate([ids, tokens], axis=1)

    return generate
