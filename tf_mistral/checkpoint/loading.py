"""Loading a Hugging Face safetensors checkpoint into a Keras model.

Tensors are read (`safetensors_io`) 16 MB of rows at a time and written in place (under XLA, see
`_write_block`) into variables built with zeros (no random init), so peak memory stays near one
copy of the model (docs/memory.md): a bfloat16 checkpoint goes into bfloat16 variables without a
float32 detour, and nothing is memory-mapped. Into a Keras int8 model
(`from_pretrained(quantize="int8")`) each block is quantized as it arrives.
"""

import os
import warnings

import keras
from keras import ops
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tf_mistral.checkpoint.layout import checkpoint_table, numpy_dtype, shape_hint
from tf_mistral.quantization import Int8Target
from tf_mistral.safetensors_io import CheckpointError, open_checkpoint

_BLOCK_BYTES = 16 * 2**20  # rows read and assigned at once while loading
# Head weights that a checkpoint of another head type carries; HF skips them silently too.
OTHER_HEADS = {"lm_head.weight", "score.weight", "score.bias"}


def load_weights(
    model: keras.Model, directory: str | os.PathLike, progress: bool = True,
    ignore_mismatched_sizes: bool = False,
) -> None:
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
    missing_heads = [name for name in missing if name in OTHER_HEADS]
    if len(missing) > len(missing_heads):
        raise CheckpointError(
            f"checkpoint in {directory} lacks {len(missing) - len(missing_heads)} tensors this model "
            f"needs, e.g. {[n for n in missing if n not in OTHER_HEADS][:5]}: is config.json from another model?"
        )
    unexpected = [stored[name] for name in stored if name not in table and name not in OTHER_HEADS]
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
        if file_shape != expected and ignore_mismatched_sizes and name in OTHER_HEADS:
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
                f"implies {expected}; {shape_hint(name, file_shape, model.config)}"
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
    return {(name if name in OTHER_HEADS else "model." + name): name for name in located}
