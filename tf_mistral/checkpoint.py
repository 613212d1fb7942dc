"""Hugging Face safetensors checkpoints <-> Keras variables.

The weight names are HF's; the table below is almost the identity, because our layer names follow
the checkpoint. PyTorch stores linear weights `[out, in]`, Keras `Dense` kernels are `[in, out]`.

Tensors are read with plain file I/O (the safetensors format is an 8-byte header length, a JSON
header and raw little-endian data), 16 MB of rows at a time, written in place (under XLA, see
`_write_block`) into variables built with zeros (no random init), so peak memory stays near one
copy of the model (docs/memory.md): a
bfloat16 checkpoint goes into bfloat16 variables without a float32 detour, and nothing is
memory-mapped.
"""

import dataclasses
import json
import os
import re
import warnings

import keras
from keras import ops
import ml_dtypes
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_DTYPES = {
    "F64": np.dtype("float64"),
    "F32": np.dtype("float32"),
    "F16": np.dtype("float16"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("int64"),
    "I32": np.dtype("int32"),
    "I16": np.dtype("int16"),
    "I8": np.dtype("int8"),
    "U8": np.dtype("uint8"),
    "BOOL": np.dtype("bool"),
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_BLOCK_BYTES = 16 * 2**20  # rows read and assigned at once while loading
# Head weights that a checkpoint of another head type carries; HF skips them silently too.
_OTHER_HEADS = {"lm_head.weight", "score.weight", "score.bias"}


def numpy_dtype(name):
    """numpy dtype for a Keras dtype name; bfloat16 comes from ml_dtypes."""
    name = keras.backend.standardize_dtype(name)
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into this model; the message names the tensor."""


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
        if dense is not None:
            table[f"{head}.weight"] = (dense, "kernel", True)
            if dense.use_bias:
                table[f"{head}.bias"] = (dense, "bias", False)
    return table


# ----------------------------------------------------------------------------------------------
# Reading


class SafetensorsFile:
    """The header of one safetensors file, and its tensors read on demand."""

    def __init__(self, path):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is not a safetensors file: it has only {size} bytes")
            header_length = int.from_bytes(head, "little")
            if header_length > size - 8 or header_length > 100_000_000:
                raise CheckpointError(f"{path} is truncated or not a safetensors file (header of {header_length} bytes)")
            try:
                header = json.loads(f.read(header_length))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise CheckpointError(f"{path} has a corrupt safetensors header: {error}") from None
        header.pop("__metadata__", None)
        self.data_start = 8 + header_length
        self.tensors = {}
        for name, info in header.items():
            try:
                dtype = _DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
            if end - begin != dtype.itemsize * int(np.prod(shape)):
                raise CheckpointError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape} {info['dtype']}")
            if self.data_start + end > size:
                raise CheckpointError(
                    f"{path} is truncated: tensor {name!r} ends at byte {self.data_start + end} "
                    f"but the file has {size} bytes; download or copy it again"
                )
            self.tensors[name] = (dtype, shape, begin, end)

    def read(self, name, rows=None):
        """The tensor, or its rows `rows = (start, stop)` along the first axis, as a numpy array
        in its stored dtype; the file is read straight into the array."""
        dtype, shape, begin, end = self.tensors[name]
        if rows is not None:
            row_bytes = (end - begin) // max(shape[0], 1)
            begin, end = begin + rows[0] * row_bytes, begin + rows[1] * row_bytes
            shape = (rows[1] - rows[0],) + shape[1:]
        array = np.empty(shape, dtype)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            count = f.readinto(array.reshape(-1).view(np.uint8))
        if count != end - begin:
            raise CheckpointError(f"{self.path} is truncated inside tensor {name!r}")
        return array

    def nbytes(self, name):
        _, _, begin, end = self.tensors[name]
        return end - begin


def open_checkpoint(directory):
    """`{tensor name: SafetensorsFile}` for a single-file or sharded HF checkpoint folder."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint folder {directory!r} does not exist")
    index_path = os.path.join(directory, INDEX_FILE)
    single_path = os.path.join(directory, SINGLE_FILE)
    if os.path.exists(index_path):
        with open(index_path, encoding="utf-8") as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as error:
                raise CheckpointError(f"{index_path} is not a safetensors index: {error}") from None
        files = {}
        for file_name in sorted(set(weight_map.values())):
            path = os.path.join(directory, file_name)
            if not os.path.exists(path):
                raise CheckpointError(f"{INDEX_FILE} lists {file_name} but it is not in {directory}")
            files[file_name] = SafetensorsFile(path)
        located = {}
        for name, file_name in weight_map.items():
            if name not in files[file_name].tensors:
                raise CheckpointError(f"{INDEX_FILE} puts {name!r} in {file_name}, which does not hold it")
            located[name] = files[file_name]
        return located
    if os.path.exists(single_path):
        shard = SafetensorsFile(single_path)
        return {name: shard for name in shard.tensors}
    pickles = [f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    if pickles:
        raise CheckpointError(
            f"{directory} holds only pickle checkpoints ({', '.join(sorted(pickles))}), which can run "
            "arbitrary code when loaded and are not read here. Convert them once with HF transformers: "
            "`MistralForCausalLM.from_pretrained(dir).save_pretrained(out_dir, safe_serialization=True)`"
        )
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")


def _shape_hint(name, file_shape, config):
    if ".k_proj." in name or ".v_proj." in name:
        heads = file_shape[0] / config.head_dim
        return (f"checkpoint has {heads:g} kv heads of {config.head_dim} but config says "
                f"{config.num_key_value_heads}: is config.json from another model?")
    if "embed_tokens" in name or name == "lm_head.weight":
        return f"checkpoint vocabulary is {file_shape[0]} but config says {config.vocab_size}"
    return "is config.json from another model?"


def load_weights(model, directory, progress=True):
    """Assigns every tensor of the checkpoint in `directory` to `model` (built here if it is not).

    All names and shapes are checked before any data is read; a missing, unexpected or
    mis-shaped tensor raises `CheckpointError` naming it. Head weights the checkpoint lacks
    (a classifier `score` loaded from a base checkpoint) keep their fresh initialisation, with a
    warning, as in HF transformers.
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
    for name in todo:
        layer, attribute, transposed = table[name]
        expected = tuple(getattr(layer, attribute).shape)
        expected = expected[::-1] if transposed else expected
        dtype, file_shape = located[stored[name]].tensors[stored[name]][:2]
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
            _assign(getattr(layer, attribute), located[stored[name]], stored[name], transposed)
            bar.update(located[stored[name]].nbytes(stored[name]))


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


def _assign(variable, source, name, transposed):
    """Copies tensor `name` of `source` into `variable`, a block of rows at a time written in
    place into the variable's buffer: a load holds one block beyond the variables, never a whole
    tensor nor its transposed copy (the lm_head of a 7B model is 500 MB)."""
    shape = source.tensors[name][1]
    dtype = numpy_dtype(variable.dtype)
    if len(shape) < 2:
        variable.assign(source.read(name).astype(dtype, copy=False))
        return
    # The tf.Variable behind the Keras variable; under a tf.distribute strategy, each replica's.
    replicas = getattr(variable.value, "values", (variable.value,))
    step = min(shape[0], max(1, _BLOCK_BYTES // max(source.nbytes(name) // shape[0], 1)))
    for start in range(0, shape[0], step):
        start = min(start, shape[0] - step)  # the last block overlaps the one before: one block shape
        block = tf.convert_to_tensor(source.read(name, (start, start + step)).astype(dtype, copy=False))
        if transposed:  # file [out, in] rows -> the same range of kernel [in, out] columns
            block, corner = tf.transpose(block), [0, start]
        else:
            corner = [start, 0]
        for replica in replicas:
            with tf.device(replica.device):  # XLA runs where the variable lives
                _write_block(replica, block, corner)


@tf.function(jit_compile=True)
def _write_block(variable, block, corner):
    """Writes `block` into `variable` with its first element at `corner` (int32 `[2]`).

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


def parse_size(size):
    """Bytes from an int or a string such as "5GB", "100MB", "500KB"."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read a size from {size!r}; write e.g. '5GB' or '500MB'")
    units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    return int(float(match.group(1)) * units[(match.group(2) or "B").lower()])


def _plan_shards(entries, max_shard_bytes):
    shards, current, current_bytes = [], [], 0
    for entry in entries:
        if current and current_bytes + entry[3] > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(entry)
        current_bytes += entry[3]
    if current:
        shards.append(current)
    return shards


def _write_shard(path, entries, bar):
    """Writes one safetensors file; the temporary file is renamed only once complete."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, _, (dtype, shape), nbytes in entries:
        header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for _, fetch, _, nbytes in entries:
            f.write(fetch().tobytes())
            bar.update(nbytes)
    os.replace(temporary, path)


def write_tensors(path, arrays):
    """Writes `{name: numpy array}` as one safetensors file, atomically (temporary file, then rename)."""
    entries = [(name, (lambda a=a: np.ascontiguousarray(a)), (a.dtype, a.shape), a.nbytes) for name, a in arrays.items()]
    with tqdm(total=sum(e[3] for e in entries), disable=True) as bar:
        _write_shard(path, entries, bar)


def _saved_value(layer, attribute):
    """What `save_weights` writes for one attribute: a LoRA-enabled kernel merged in float32."""
    if attribute == "kernel" and getattr(layer, "lora_enabled", False):
        from tf_mistral.training.lora import merged_kernel

        return merged_kernel(layer)
    return getattr(layer, attribute)


def save_weights(model, directory, max_shard_size="5GB", dtype=None, progress=True):
    """Writes `config.json` and the weights in HF layout (see `MistralPreTrainedModel.save_pretrained`)."""
    for layer in model._flatten_layers():
        if getattr(layer, "quantization_mode", None):
            raise ValueError(
                "save_pretrained writes floating-point HF checkpoints; this model is quantized "
                f"({layer.name}: {layer.quantization_mode}). Save the float model before quantize()."
            )
    target = None if dtype is None else numpy_dtype(dtype)
    entries = []
    for name, (layer, attribute, transposed) in checkpoint_table(model).items():
        value = _saved_value(layer, attribute)
        out_dtype = target or numpy_dtype(value.dtype)
        shape = tuple(value.shape)[::-1] if transposed else tuple(value.shape)

        def fetch(layer=layer, attribute=attribute, transposed=transposed, out_dtype=out_dtype):
            array = keras.ops.convert_to_numpy(_saved_value(layer, attribute))
            return np.ascontiguousarray(array.T if transposed else array, dtype=out_dtype)

        entries.append((name, fetch, (out_dtype, shape), out_dtype.itemsize * int(np.prod(shape))))

    os.makedirs(directory, exist_ok=True)
    shards = _plan_shards(entries, parse_size(max_shard_size))
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    ]
    total = sum(entry[3] for entry in entries)
    with tqdm(total=total, unit="B", unit_scale=True, desc="saving weights", disable=not progress) as bar:
        for file_name, shard in zip(names, shards):
            _write_shard(os.path.join(directory, file_name), shard, bar)
    for stale in os.listdir(directory):
        if re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?", stale) and stale not in names:
            os.remove(os.path.join(directory, stale))
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {e[0]: f for f, shard in zip(names, shards) for e in shard}}
        with open(os.path.join(directory, INDEX_FILE + ".tmp"), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
        os.replace(os.path.join(directory, INDEX_FILE + ".tmp"), os.path.join(directory, INDEX_FILE))
    saved_dtype = keras.backend.standardize_dtype(entries[0][2][0].name)
    config = dataclasses.replace(model.config, torch_dtype=saved_dtype)
    config.save(directory, architecture=model.hf_architecture)
