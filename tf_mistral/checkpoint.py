"""Hugging Face safetensors checkpoints <-> Keras variables.

The weight names are HF's; the table below is almost the identity, because our layer names follow
the checkpoint. PyTorch stores linear weights `[out, in]`, Keras `Dense` kernels are `[in, out]`.

Tensors are read (`safetensors_io`) 16 MB of rows at a time and written in place (under XLA, see
`_write_block`) into variables built with zeros (no random init), so peak memory stays near one
copy of the model (docs/memory.md): a bfloat16 checkpoint goes into bfloat16 variables without a
float32 detour, and nothing is memory-mapped. Saving goes through
`safetensors_io.write_checkpoint`, which never leaves a mix of an old and a new checkpoint.
"""

import dataclasses
import warnings

import keras
from keras import ops
import ml_dtypes
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tf_mistral.arguments import parse_size
from tf_mistral.quantization import Int8Target
from tf_mistral.safetensors_io import CheckpointError, TensorEntry, open_checkpoint, write_checkpoint

_BLOCK_BYTES = 16 * 2**20  # rows read and assigned at once while loading
# Head weights that a checkpoint of another head type carries; HF skips them silently too.
_OTHER_HEADS = {"lm_head.weight", "score.weight", "score.bias"}


def numpy_dtype(name):
    """numpy dtype for a Keras dtype name; bfloat16 comes from ml_dtypes."""
    name = keras.backend.standardize_dtype(name)
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def checkpoint_table(model):
    """Maps each HF tensor name to `(layer, attribute, transposed)` for `model`.

    A bare `TFMistralModel` uses the names HF's `MistralModel` writes (no `model.` prefix).
    """
    from tf_mistral.models.backbone import TFMistralModel

    backbone = model if isinstance(model, TFMistralModel) else model.model
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


def _shape_hint(name, file_shape, config):
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


def load_weights(model, directory, progress=True, ignore_mismatched_sizes=False):
    """Assigns every tensor of the checkpoint in `directory` to `model` (built here if it is not).

    All names and shapes are checked before any data is read; a missing, unexpected or
    mis-shaped tensor raises `CheckpointError` naming it, and so does a tensor holding NaN or
    infinity (checked block by block as it is read). Head weights the checkpoint lacks (a
    classifier `score` loaded from a base checkpoint, an `lm_head` from a bare backbone) keep
    their fresh initialisation, with a warning, as in HF transformers; a classifier checkpoint is
    refused by a causal LM, whose random `lm_head` would generate noise. With
    `ignore_mismatched_sizes`, a head tensor whose shape differs from the model's (another
    `num_labels`) is skipped and the head re-initialised, with a warning, as HF does.
    """
    located = open_checkpoint(directory)
    table = checkpoint_table(model)
    adapted = sorted({layer.name for layer, _, _ in table.values() if getattr(layer, "lora_enabled", False)})
    if adapted:
        raise CheckpointError(
            f"this model has LoRA enabled ({', '.join(adapted)}); load the checkpoint into a fresh model "
            "(from_pretrained), then enable_lora() or load_lora_weights()"
        )
    stored = _stored_names(table, located)
    _refuse_classifier_for_causal_lm(table, stored, directory)

    missing = [name for name in table if name not in stored]
    missing_heads = [name for name in missing if name in _OTHER_HEADS]
    if len(missing) > len(missing_heads):
        raise CheckpointError(
            f"checkpoint in {directory} lacks {len(missing) - len(missing_heads)} tensors this model "
            f"needs, e.g. {[n for n in missing if n not in _OTHER_HEADS][:5]}: is config.json from another model?"
        )
    unexpected = [stored[name] for name in stored if name not in table and name not in _OTHER_HEADS]
    if unexpected:
        raise CheckpointError(
            f"checkpoint in {directory} has {len(unexpected)} tensors this model does not know, "
            f"e.g. {unexpected[:5]}: is config.json from another model?"
        )
    todo = [name for name in table if name in stored]
    if not model.built:
        filled = {table[name][0] for name in todo} - {table[name][0] for name in missing}
        _build_without_random_init(model, filled)
        for name in missing_heads:  # Keras builds int8 layers with zeros: draw and quantize as quantize() would
            if Int8Target.of(*table[name][:2]) is not None:
                _initialise(*table[name][:2])
    for name in list(todo):
        layer, attribute, transposed = table[name]
        variable = getattr(layer, attribute)
        expected = tuple(variable.shape)[::-1] if transposed else tuple(variable.shape)
        dtype, file_shape = located[stored[name]].tensors[stored[name]][:2]
        if file_shape != expected and ignore_mismatched_sizes and name in _OTHER_HEADS:
            todo.remove(name)
            _initialise(layer, attribute)
            warnings.warn(
                f"{name} has shape {file_shape} in the checkpoint but {expected} in this model: newly "
                "initialised (ignore_mismatched_sizes=True); train this head before use",
                stacklevel=3,
            )
            continue
        if file_shape != expected:
            raise CheckpointError(
                f"tensor {stored[name]!r} has shape {file_shape} in the checkpoint but the config "
                f"implies {expected}; {_shape_hint(name, file_shape, model.config)}"
            )
        if dtype.kind not in "fV":
            raise CheckpointError(f"tensor {stored[name]!r} is stored as {dtype}, not a floating dtype")
    if missing_heads:
        warnings.warn(
            f"{missing_heads} not in the checkpoint: newly initialised; train this head before use",
            stacklevel=3,
        )

    total = sum(located[stored[name]].nbytes(stored[name]) for name in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc="loading weights", disable=not progress) as bar:
        for name in todo:
            layer, attribute, transposed = table[name]
            _assign(layer, attribute, located[stored[name]], stored[name], transposed)
            bar.update(located[stored[name]].nbytes(stored[name]))


def _refuse_classifier_for_causal_lm(table, stored, directory):
    """Raises CheckpointError when a model with an `lm_head` (a causal LM) is given a classifier
    checkpoint (`score.weight` and no `lm_head.weight`): its lm_head would stay random."""
    if "lm_head.weight" not in table or "lm_head.weight" in stored or "score.weight" not in stored:
        return
    task, model_class = (
        ("token", "TFMistralForTokenClassification") if "score.bias" in stored
        else ("sequence", "TFMistralForSequenceClassification")
    )
    raise CheckpointError(
        f"{directory} is a {task}-classification checkpoint (score.weight, no lm_head.weight): load it "
        f"with {model_class}; as a causal LM it would generate from a random lm_head"
    )


def _build_without_random_init(model, filled_layers):
    """Builds `model` with zeros in place of the random initializers of `filled_layers` (those the
    checkpoint fills entirely). Random init would take minutes for 7B, and its float32 temporaries
    stay in the process: a 2 GB model built with Glorot init holds 1.4x its bytes, with zeros 1.06x."""
    names = ("kernel_initializer", "bias_initializer", "embeddings_initializer")
    saved = [(layer, n, getattr(layer, n)) for layer in filled_layers for n in names if hasattr(layer, n)]
    for layer, attribute, _ in saved:
        setattr(layer, attribute, keras.initializers.Zeros())
    try:
        model.build()
    finally:
        for layer, attribute, initializer in saved:
            setattr(layer, attribute, initializer)


def _assign(layer, attribute, source, name, transposed):
    """Copies tensor `name` of `source` into `layer.<attribute>`, a block of rows at a time written
    in place into the variable's buffer: a load holds one block beyond the variables, never a whole
    tensor nor its transposed copy (the lm_head of a 7B model is 500 MB). Into a Keras int8 layer
    (`from_pretrained(quantize="int8")`), each block is quantized as Keras' `quantize()` would and
    its int8 values and scales are written (`quantization.Int8Target`)."""
    shape = source.tensors[name][1]
    target = Int8Target.of(layer, attribute)
    variable = getattr(layer, attribute) if target is None else target.values
    dtype = numpy_dtype(variable.dtype if target is None else target.float_dtype)
    if len(shape) < 2:
        variable.assign(_finite(source.read(name), name).astype(dtype, copy=False))
        return
    step = min(shape[0], max(1, _BLOCK_BYTES // max(source.nbytes(name) // shape[0], 1)))
    for start in range(0, shape[0], step):
        start = min(start, shape[0] - step)  # the last block overlaps the one before: one block shape
        block = _finite(source.read(name, (start, start + step)), name).astype(dtype, copy=False)
        # file [out, in] rows -> the same range of kernel [in, out] columns
        corner = [0, start] if transposed else [start, 0]
        if target is None:
            block = tf.convert_to_tensor(block)
            _write_replicas(variable, tf.transpose(block) if transposed else block, corner)
        else:
            values, scale = target.quantize(block.T if transposed else block)
            _write_replicas(target.values, values, corner)
            _write_replicas(target.scale, scale, [start])


def _write_replicas(variable, block, corner):
    """`_write_block` into the tf.Variable behind the Keras `variable`; under a tf.distribute
    strategy, into each replica's."""
    for replica in getattr(variable.value, "values", (variable.value,)):
        with tf.device(replica.device):  # XLA runs where the variable lives
            _write_block(replica, block, corner)


def _initialise(layer, attribute):
    """Gives `layer.<attribute>` a fresh draw of its initializer; in a Keras int8 layer, the draw
    quantized (in the layer's float dtype, as `quantize()` quantizes a freshly built layer)."""
    initializer = getattr(layer, f"{attribute}_initializer")
    target = Int8Target.of(layer, attribute)
    if target is None:
        variable = getattr(layer, attribute)
        variable.assign(initializer(variable.shape, variable.dtype))
        return
    values, scale = target.quantize(ops.convert_to_numpy(initializer(target.values.shape, target.float_dtype)))
    target.values.assign(values)
    target.scale.assign(scale)


def _finite(array, name):
    """`array` (float numpy, rows of tensor `name` as stored), after checking it holds no NaN or
    infinity; raises CheckpointError naming the tensor otherwise.

    16-bit floats are checked on their bits, 2.4x faster than ml_dtypes' `isfinite` on bfloat16:
    a value is NaN or infinite when its magnitude bits (all but the sign) reach infinity's.
    """
    if array.dtype.itemsize == 2:
        infinity = np.array(np.inf, array.dtype).view(np.uint16)
        finite = array.size == 0 or (array.view(np.uint16) & 0x7FFF).max() < infinity
    else:
        finite = np.isfinite(array).all()
    if not finite:
        raise CheckpointError(
            f"tensor {name!r} holds NaN or infinite values: the checkpoint is corrupt or was saved from a "
            "diverged training run; download or copy it again, or save it from a healthy model"
        )
    return array


@tf.function(jit_compile=True)
def _write_block(variable, block, corner):
    """Writes `block` into `variable` with its first element at `corner` (ints, one per axis).

    Under XLA the update happens in the variable's own buffer. The TF ops that write a slice of a
    variable in place (`ResourceStridedSliceAssign`, scatters) mark it for sparse access, after
    which TensorFlow copies the whole variable at every read in a graph (each step of `fit`, of a
    SavedModel call, of a TF-graph prefill); assigning whole tensors instead holds up to three
    copies of the largest one (docs/benchmarks.md). Traced once per variable and block shape.
    """
    variable.assign(ops.slice_update(variable, corner, block))


def _stored_names(table, located):
    """`{our tensor name: the checkpoint's name for it}`. HF's bare `MistralModel` writes no
    `model.` prefix and the heads do; either checkpoint loads into either model (a bare model
    skips the heads' tensors)."""
    ours_prefixed = any(name.startswith("model.") for name in table)
    theirs_prefixed = any(name.startswith("model.") for name in located)
    if ours_prefixed == theirs_prefixed:
        return {name: name for name in located}
    if theirs_prefixed:
        return {name[len("model."):]: name for name in located if name.startswith("model.")}
    return {(name if name in _OTHER_HEADS else "model." + name): name for name in located}


# ----------------------------------------------------------------------------------------------
# Writing

_CHECKPOINT_DTYPES = ("float32", "bfloat16", "float16")


def _saved_value(layer, attribute):
    """What `save_weights` writes for one attribute: a LoRA-enabled kernel merged in float32."""
    if attribute == "kernel" and getattr(layer, "lora_enabled", False):
        from tf_mistral.training.lora import merged_kernel

        return merged_kernel(layer)
    return getattr(layer, attribute)


def save_weights(model, directory, max_shard_size="5GB", dtype=None, progress=True):
    """Writes the weights in HF layout, then `config.json` (see `MistralPreTrainedModel.save_pretrained`).

    Everything is checked before the folder is touched: a quantized model, a `dtype` other than
    float32 / bfloat16 / float16, a `max_shard_size` that is not a size."""
    for layer in model._flatten_layers():
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
