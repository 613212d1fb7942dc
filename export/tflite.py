"""TFLite / LiteRT export: `prefill_{N}` and `decode` signatures over an external KV cache.

Every signature runs `TFMistralForCausalLM.forward_with_cache`, the model path Keras and `generate`
use. Inputs (DESIGN §5, the names LiteRT-LM's CPU executor looks for):
    tokens          int32 `[1, S]`
    input_pos       int32 `[S]`: positions `p, p+1, ...`; the graph reads the start from
                    `input_pos[0]` and derives the causal / sliding-window mask and every ring
                    slot's position from it (no mask input).
    kv_cache_k_{i}  float32 `[1, kv_heads, T, head_dim]`
    kv_cache_v_{i}  float32 `[1, kv_heads, head_dim, T]`
Outputs: the updated `kv_cache_*` under the same names, and for `decode` `logits` float32
`[1, 1, vocab]`. Prefill signatures return no logits: a runtime prefills all prompt tokens but
the last and decodes from that one, as LiteRT-LM does.

Bad input gives NaN, never a quiet wrong answer: a token outside [0, vocab), a negative
`input_pos[0]`, or (without a sliding window) positions past the T cache slots make the decode
logits, and every cache tensor a prefill returns, NaN (`_checked_inputs`).

Right padding is safe. A runtime fills a short chunk up to N with padding whose `input_pos`
breaks the run `input_pos[0] + i` (LiteRT-LM pads with position 0, `TFLiteRunner` with -1). The
graph counts the entries that continue the run and restores every ring slot that only a padding
entry wrote, so padding never overwrites history, even when the ring has wrapped under a sliding
window. Padding queries are causal-masked out of the real ones (their positions come later).
Hence each N must be <= T: a chunk never writes two entries into one slot.

Memory: the model is built without weights (Keras variables left uninitialised in a
`StatelessScope`), and the signatures are traced with every weight as an input (`weight_<HF
name>`), bound to the model's variables by a `StatelessScope` mapping. The TF converter therefore
converts a graph of a few MB whatever the model's size; `tflite_assembly.py` then makes the weight
inputs constant buffers and streams the (quantized) weights into the file one tensor at a time
(`tflite_weights.py`). An export holds one float32 tensor at a time: a 7B export needs a few GB.
"""

from collections.abc import Callable, Iterable, Mapping
import dataclasses
import os
import shutil
import tempfile
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema

from tf_mistral import cache as kv_cache
from tf_mistral.checkpoint import checkpoint_table
from tf_mistral.config import MistralConfig
from tf_mistral.export import litertlm as bundle
from tf_mistral.export import tflite_assembly
from tf_mistral.export.progress import Progress, peak_rss_gb
from tf_mistral.export.tflite_options import (
    DEFAULT_INT4_BLOCK_SIZE,
    DEFAULT_PREFILL_LENGTHS,
    INT4_BLOCK_SIZES,
    QUANTIZE_OPTIONS,
)
from tf_mistral.export.tflite_weights import EMBEDDING, WEIGHT_INPUT_PREFIX, norm_names, weight_encodings, weight_plan
from tf_mistral.models.causal_lm import TFMistralForCausalLM
from tf_mistral.safetensors_io import CheckpointError, open_checkpoint
from tf_mistral.tflite_runner import weight_cache_path, write_sidecar
from tf_mistral.tokenizer import MistralTokenizer

_ENCODING = {
    "none": "float32 weights",
    "fp16": "float16 weights",
    "int8": "int8 weights (per-row scales; the embedding per-tensor)",
    "int4": "int4 weights in blocks of {block_size}",
}


def cache_names(num_layers: int) -> list[tuple[str, str]]:
    """`[(kv_cache_k_0, kv_cache_v_0), ...]`: the cache tensor names of every layer."""
    return [(f"kv_cache_k_{i}", f"kv_cache_v_{i}") for i in range(num_layers)]


def resolve_lengths(
    config: MistralConfig, cache_length: int, prefill_lengths: Iterable[int] | None
) -> tuple[int, list[int]]:
    """The cache slots T and the sorted prefill lengths, or a ValueError saying what to change.

    T is `min(cache_length, sliding_window)` (a rolling buffer, as in `generate`). Explicit prefill
    lengths must be in [1, T]; the defaults are clipped to T.
    """
    if not isinstance(cache_length, (int, np.integer)) or cache_length < 1:
        raise ValueError(f"cache_length must be a positive integer, got {cache_length!r}")
    slots = kv_cache.cache_length(int(cache_length), config.sliding_window)
    if prefill_lengths is None:
        lengths = sorted({min(n, slots) for n in DEFAULT_PREFILL_LENGTHS})
    else:
        lengths = sorted({int(n) for n in prefill_lengths})
        if not lengths:
            raise ValueError("prefill_lengths is empty: give at least one length, e.g. 32,128")
        bad = [n for n in lengths if not 1 <= n <= slots]
        if bad:
            window = f" (sliding window {config.sliding_window})" if config.sliding_window else ""
            raise ValueError(
                f"prefill lengths {bad} do not fit the cache of {slots} slots{window}: "
                f"use lengths between 1 and {slots}"
            )
    return slots, lengths


def _restore_padded_slots(old_cache, new_cache, input_pos):
    """Keeps every slot's old K/V unless a real (non-padding) entry of the chunk wrote it.

    Args:
        old_cache, new_cache: per-layer `(K, V)` before and after the chunk.
        input_pos: int32 `[S]`, S <= slots; entry i is real when `input_pos[i] == input_pos[0] + i`.
    """
    seq = input_pos.shape[0]
    start = input_pos[0]
    real = tf.reduce_sum(tf.cast(tf.equal(input_pos, start + tf.range(seq, dtype=tf.int32)), tf.int32))
    slots = old_cache[0][0].shape[2]
    written = kv_cache.slot_positions(start + real, slots) >= start  # bool [T]
    return [
        (tf.where(written[:, None], k_new, k_old), tf.where(written, v_new, v_old))
        for (k_old, v_old), (k_new, v_new) in zip(old_cache, new_cache)
    ]


def _checked_inputs(tokens, input_pos, config, slots):
    """`(tokens clamped to [0, vocab), poison)`: poison is float32 0, or NaN when the inputs are
    out of contract -- a token outside [0, vocab), a negative `input_pos[0]`, or, without a
    sliding window, real positions past the cache (they would wrap onto live slots). Added to
    the decode logits and to the caches a prefill returns, NaN makes bad input unmistakable
    instead of quietly computing from a wrong token or a clobbered slot.

    Args:
        tokens: int32 `[1, S]`.
        input_pos: int32 `[S]`; entry i is real when `input_pos[i] == input_pos[0] + i`.
    """
    seq = input_pos.shape[0]
    start = input_pos[0]
    bad = tf.reduce_any((tokens < 0) | (tokens >= config.vocab_size)) | (start < 0)
    if config.sliding_window is None:
        real = tf.reduce_sum(tf.cast(tf.equal(input_pos, start + tf.range(seq, dtype=tf.int32)), tf.int32))
        bad = bad | (start + real > slots)
    poison = tf.where(bad, tf.constant(float("nan")), tf.constant(0.0))
    return tf.clip_by_value(tokens, 0, config.vocab_size - 1), poison


def weightless_model(config: MistralConfig) -> TFMistralForCausalLM:
    """A float32 `TFMistralForCausalLM` whose variables hold no memory (created uninitialised in
    a `StatelessScope`): it can only run inside a scope that maps every variable to a tensor.

    A model with tied embeddings is built untied: its `lm_head` input carries the embedding
    matrix (`weight_reader`), with the final norm folded in as for any `lm_head`, while the
    embedding lookup reads the matrix as it is.
    """
    with keras.StatelessScope(initialize_variables=False):
        model = TFMistralForCausalLM(dataclasses.replace(config, tie_word_embeddings=False), dtype="float32")
        model.build()
    return model


def weight_binding(model: TFMistralForCausalLM) -> Callable[[Mapping[str, tf.Tensor]], keras.StatelessScope]:
    """`bind(inputs) -> StatelessScope` mapping each variable of `model` to its graph input.

    Projections read `inputs["weight_<HF name>"]` (dots as underscores) in HF layout `[out, in]`
    (transposed into the Keras kernel's `[in, out]`; the converter cancels the two transposes,
    so FULLY_CONNECTED reads the input as it is); the embedding reads its input as it is; the
    RMSNorm weights are ones (`tflite_weights` folds them into the projections they feed).
    """
    table = checkpoint_table(model)
    norms = set(norm_names(model.config))

    def bind(inputs):
        mapping = []
        for name, (layer, attribute, transposed) in table.items():
            variable = getattr(layer, attribute)
            if name in norms:
                value = tf.ones(variable.shape, tf.float32)
            else:
                value = inputs[WEIGHT_INPUT_PREFIX + name.replace(".", "_")]
                value = tf.transpose(value) if transposed else value
            mapping.append((variable, value))
        return keras.StatelessScope(state_mapping=mapping, initialize_variables=False)

    return bind


def signature_functions(
    model: TFMistralForCausalLM, slots: int, prefill_lengths: Iterable[int]
) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """`{signature name: concrete function}` for `prefill_{N}` and `decode` of a weightless model.

    Each function takes one dict: `tokens`, `input_pos`, the `kv_cache_*` tensors, and a float32
    input `weight_<HF name>` per weight of `tflite_weights.weight_plan` in HF layout.
    """
    config = model.config
    names = cache_names(config.num_hidden_layers)
    k_shape = [1, config.num_key_value_heads, slots, config.head_dim]
    v_shape = [1, config.num_key_value_heads, config.head_dim, slots]
    bind = weight_binding(model)

    def specs(seq):
        spec = {
            "tokens": tf.TensorSpec([1, seq], tf.int32, name="tokens"),
            "input_pos": tf.TensorSpec([seq], tf.int32, name="input_pos"),
        }
        for k_name, v_name in names:
            spec[k_name] = tf.TensorSpec(k_shape, tf.float32, name=k_name)
            spec[v_name] = tf.TensorSpec(v_shape, tf.float32, name=v_name)
        for weight in weight_plan(config):
            spec[weight.input_name] = tf.TensorSpec(weight.shape, tf.float32, name=weight.input_name)
        return spec

    def step(inputs, decode):
        cache = [(inputs[k_name], inputs[v_name]) for k_name, v_name in names]
        tokens, poison = _checked_inputs(inputs["tokens"], inputs["input_pos"], config, slots)
        with bind(inputs):
            logits, new_cache = model.forward_with_cache(  # in place: DYNAMIC_UPDATE_SLICE
                tokens, cache, inputs["input_pos"][0], cache_writes=kv_cache.SLICE_WRITES
            )
        if decode:
            outputs = {"logits": tf.cast(logits, tf.float32) + poison}
        else:
            new_cache = _restore_padded_slots(cache, new_cache, inputs["input_pos"])
            new_cache = [(k + poison, v + poison) for k, v in new_cache]
            outputs = {}
        for (k_name, v_name), (k, v) in zip(names, new_cache):
            outputs[k_name], outputs[v_name] = k, v
        return outputs

    functions = {}
    for seq in prefill_lengths:
        def prefill(inputs):
            return step(inputs, decode=False)

        prefill.__name__ = f"prefill_{seq}"
        functions[prefill.__name__] = tf.function(prefill, input_signature=[specs(seq)]).get_concrete_function()

    def decode(inputs):
        return step(inputs, decode=True)

    functions["decode"] = tf.function(decode, input_signature=[specs(1)]).get_concrete_function()
    return functions


def convert_graph(functions: Mapping[str, tf.types.experimental.ConcreteFunction]) -> bytes:
    """The TF converter's flatbuffer of the weightless signatures (builtin ops only)."""
    workdir = tempfile.mkdtemp(prefix="tf_mistral_tflite_")
    try:
        saved_model = os.path.join(workdir, "saved_model")
        tf.saved_model.save(tf.Module(), saved_model, signatures=functions)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=list(functions))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # fail rather than add Flex ops
        # Constants go after the flatbuffer (offset buffers); the file then carries the
        # `buffer_location` metadata that LiteRT reads for the weights the assembly appends.
        # A private switch (no public one); tests/test_private_apis.py checks it is still there.
        converter._experimental_use_buffer_offset = True
        return converter.convert()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def operator_names(model_content: bytes) -> set[str]:
    """Names of the operators a flatbuffer uses: builtin names, or `CUSTOM:<name>` (Flex ops are
    custom ops named `Flex...`)."""
    builtin = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.Model.GetRootAs(model_content, 0)
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if op == schema.BuiltinOperator.CUSTOM:
            names.add(f"CUSTOM:{code.CustomCode().decode()}")
        else:
            names.add(builtin[op])
    return names


def check_builtin_ops(model_content: bytes) -> None:
    """Raises ValueError when the model has custom or Flex (TF) ops that stock LiteRT lacks."""
    custom = sorted(name for name in operator_names(model_content) if name.startswith("CUSTOM:"))
    if custom:
        raise ValueError(f"the TFLite model uses non-builtin ops {custom}; LiteRT(-LM) cannot run it as is")


def weight_reader(
    checkpoint: str | os.PathLike | TFMistralForCausalLM
) -> tuple[MistralConfig, Callable[[str], np.ndarray]]:
    """`(config, read)`: `read(hf_name)` gives one tensor of a checkpoint folder (in its stored
    dtype) or of a `TFMistralForCausalLM` (its variable, in HF layout); with tied embeddings,
    `lm_head.weight` is the embedding matrix (HF writes no `lm_head` then)."""
    if isinstance(checkpoint, TFMistralForCausalLM):
        table = checkpoint_table(checkpoint)

        def read_variable(name):
            layer, attribute, transposed = table[_untied(name, checkpoint.config)]
            array = keras.ops.convert_to_numpy(getattr(layer, attribute))
            return array.T if transposed else array

        return checkpoint.config, read_variable
    folder = os.fspath(checkpoint)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"checkpoint folder {folder!r} does not exist or has no config.json")
    config = MistralConfig.from_json_file(folder)
    located = open_checkpoint(folder)
    needed = dict.fromkeys([_untied(w.name, config) for w in weight_plan(config)] + norm_names(config))
    missing = [name for name in needed if name not in located]
    if missing:
        hint = ("it has no lm_head: is it a classifier or a bare MistralModel? TFLite export needs a causal LM"
                if missing == ["lm_head.weight"] else "is config.json from another model?")
        raise CheckpointError(f"checkpoint {folder} lacks {missing[:3]}: {hint}")

    def read_file(name):
        name = _untied(name, config)
        return located[name].read(name)

    return config, read_file


def _untied(name, config):
    """The tensor that holds HF weight `name`: the embedding for `lm_head.weight` when the config
    ties them, else `name`."""
    return EMBEDDING if name == "lm_head.weight" and config.tie_word_embeddings else name


def _int4_block_size(plan, encodings, requested):
    """The int4 block size of an export: `requested`, checked against the input sizes of the int4
    weights, or (None) the default where they allow it, else the largest that fits them all."""
    columns = [w.shape[1] for w in plan if encodings[w.name] == "int4"]
    if requested is None:
        fitting = [size for size in INT4_BLOCK_SIZES if all(n % size == 0 for n in columns)]
        candidates = [size for size in fitting if size <= DEFAULT_INT4_BLOCK_SIZE]
        if not candidates:
            sizes = sorted(set(columns))
            raise ValueError(f"int4 needs weight input sizes divisible by {INT4_BLOCK_SIZES[0]}, got {sizes}")
        return candidates[-1]
    bad = [w.name for w in plan if encodings[w.name] == "int4" and w.shape[1] % requested]
    if bad:
        raise ValueError(f"int4 blocks of {requested} need input sizes divisible by it: {bad[:3]}")
    return requested


def export_tflite(
    checkpoint: str | os.PathLike | TFMistralForCausalLM,
    output: str | os.PathLike,
    quantize: str = "none",
    prefill_lengths: Iterable[int] | None = None,
    cache_length: int = 1024,
    litertlm: bool = False,
    tokenizer: MistralTokenizer | str | os.PathLike | None = None,
    progress: bool = True,
    int8_weights: Iterable[str] = (),
    int4_block_size: int | None = None,
) -> dict[str, Any]:
    """Converts a causal LM to a `.tflite` file with `prefill_{N}` and `decode` signatures.

    Args:
        checkpoint: HF checkpoint folder (read one tensor at a time), or a `TFMistralForCausalLM`
            (its variables are read the same way; any dtype).
        output: path of the `.tflite` file to write (atomically: `output.partial`, then renamed).
        quantize: "none" (float32), "fp16" (float16 weights), "int8" (int8 weights, dynamic-range
            kernels) or "int4" (int4 blockwise weights); see `tflite_weights.py`.
        prefill_lengths: chunk lengths N of the `prefill_{N}` signatures (each <= the cache);
            default 32, 128, 512 clipped to the cache.
        cache_length: KV cache slots; a sliding window caps it (rolling buffer).
        litertlm: also write a LiteRT-LM bundle `<output stem>.litertlm` (model + tokenizer +
            metadata).
        tokenizer: SentencePiece model for the bundle (a path, a `MistralTokenizer`, or None for
            the checkpoint's tokenizer.model, else the default Mistral tokenizer).
        progress: print the stages (tracing, converting, writing) and a byte bar over the weights.
        int8_weights: with quantize="int4", the weights kept in int8: every weight whose HF name
            contains one of these (e.g. ("embed_tokens", "lm_head")); see `tflite_weights`.
        int4_block_size: with quantize="int4", the values per scale (one of `INT4_BLOCK_SIZES`);
            larger blocks decode faster on CPU and lose a little accuracy (docs/tflite.md). None:
            `DEFAULT_INT4_BLOCK_SIZE` (128), or for models too narrow for it the largest that fits.

    Returns:
        dict: `path`, `litertlm` (bundle path or None), `bytes`, `cache_length`, `prefill_lengths`,
        `ops` (operator names), `peak_rss_gb`, `stages` (message, seconds, peak RSS GB).
    """
    if quantize not in QUANTIZE_OPTIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_OPTIONS)}; got {quantize!r}")
    if int4_block_size not in (None, *INT4_BLOCK_SIZES):
        raise ValueError(f"int4_block_size must be one of {INT4_BLOCK_SIZES}; got {int4_block_size!r}")
    if litertlm:
        bundle.require_builder()  # fail before the slow part when litert-lm-builder is missing
    report = Progress("tflite", progress)
    report("reading the checkpoint's config and tensor index")
    config, read = weight_reader(checkpoint)
    slots, lengths = resolve_lengths(config, cache_length, prefill_lengths)
    output = os.fspath(output)
    plan = weight_plan(config)
    encodings = weight_encodings(plan, quantize, int8_weights)
    int4_block_size = _int4_block_size(plan, encodings, int4_block_size)

    report(f"tracing {['prefill_%d' % n for n in lengths] + ['decode']} with a {slots}-slot cache (no weights)")
    functions = signature_functions(weightless_model(config), slots, lengths)
    report("converting the graph (TF -> TFLite builtins; weights are inputs)")
    graph = convert_graph(functions)
    del functions
    kept = sum(encoding != quantize for encoding in encodings.values())
    encoding = _ENCODING[quantize].format(block_size=int4_block_size)
    report(f"writing {output}: {encoding}{f' ({kept} kept in int8)' if kept else ''}, one tensor at a time")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    head, size = tflite_assembly.write_model(graph, plan, encodings, read, output, int4_block_size, progress=progress)
    check_builtin_ops(head)
    write_sidecar(output, config, slots, lengths, quantize, int4_block_size if quantize == "int4" else None)
    stale = weight_cache_path(output)  # XNNPACK's packed weights of a previous file at this path
    if os.path.exists(stale):
        os.remove(stale)
    result = dict(
        path=output, litertlm=None, bytes=size, cache_length=slots, prefill_lengths=lengths,
        ops=sorted(operator_names(head)), peak_rss_gb=peak_rss_gb(),
    )
    if litertlm:
        report("writing the LiteRT-LM bundle")
        folder = None if isinstance(checkpoint, TFMistralForCausalLM) else checkpoint
        result["litertlm"] = bundle.build_bundle(output, config, tokenizer=tokenizer, cache_length=slots,
                                                 checkpoint=folder)
    report(f"done: {result['bytes'] / 2**20:.1f} MiB")
    result["stages"] = report.stages
    return result
