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

Right padding is safe. A runtime fills a short chunk up to N with padding whose `input_pos`
breaks the run `input_pos[0] + i` (LiteRT-LM pads with position 0, `TFLiteRunner` with -1). The
graph counts the entries that continue the run and restores every ring slot that only a padding
entry wrote, so padding never overwrites history, even when the ring has wrapped under a sliding
window. Padding queries are causal-masked out of the real ones (their positions come later).
Hence each N must be <= T: a chunk never writes two entries into one slot.
"""

import gc
import os
import shutil
import tempfile

import numpy as np

from tf_mistral.export.progress import Progress, peak_rss_gb
from tf_mistral.export.tflite_runner import write_sidecar

QUANTIZE_OPTIONS = ("none", "fp16", "int8", "int4")
DEFAULT_PREFILL_LENGTHS = (32, 128, 512)
INT4_BLOCK_SIZE = 32


def cache_names(num_layers):
    """`[(kv_cache_k_0, kv_cache_v_0), ...]`: the cache tensor names of every layer."""
    return [(f"kv_cache_k_{i}", f"kv_cache_v_{i}") for i in range(num_layers)]


def resolve_lengths(config, cache_length, prefill_lengths):
    """The cache slots T and the sorted prefill lengths, or a ValueError saying what to change.

    T is `min(cache_length, sliding_window)` (a rolling buffer, as in `generate`). Explicit prefill
    lengths must be in [1, T]; the defaults are clipped to T.
    """
    from tf_mistral import cache as kv_cache

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
    import tensorflow as tf

    from tf_mistral import cache as kv_cache

    seq = input_pos.shape[0]
    start = input_pos[0]
    real = tf.reduce_sum(tf.cast(tf.equal(input_pos, start + tf.range(seq, dtype=tf.int32)), tf.int32))
    slots = old_cache[0][0].shape[2]
    written = kv_cache.slot_positions(start + real, slots) >= start  # bool [T]
    return [
        (tf.where(written[:, None], k_new, k_old), tf.where(written, v_new, v_old))
        for (k_old, v_old), (k_new, v_new) in zip(old_cache, new_cache)
    ]


def signature_module(model, slots, prefill_lengths):
    """A `tf.Module` holding the model's variables and one `tf.function` per signature.

    Returns `(module, {signature name: concrete function})`.
    """
    import tensorflow as tf

    config = model.config
    names = cache_names(config.num_hidden_layers)
    k_shape = [1, config.num_key_value_heads, slots, config.head_dim]
    v_shape = [1, config.num_key_value_heads, config.head_dim, slots]

    def specs(seq):
        spec = {
            "tokens": tf.TensorSpec([1, seq], tf.int32, name="tokens"),
            "input_pos": tf.TensorSpec([seq], tf.int32, name="input_pos"),
        }
        for k_name, v_name in names:
            spec[k_name] = tf.TensorSpec(k_shape, tf.float32, name=k_name)
            spec[v_name] = tf.TensorSpec(v_shape, tf.float32, name=v_name)
        return spec

    def step(inputs, decode):
        cache = [(inputs[k_name], inputs[v_name]) for k_name, v_name in names]
        logits, new_cache = model.forward_with_cache(inputs["tokens"], cache, inputs["input_pos"][0])
        if not decode:
            new_cache = _restore_padded_slots(cache, new_cache, inputs["input_pos"])
        outputs = {"logits": tf.cast(logits, tf.float32)} if decode else {}
        for (k_name, v_name), (k, v) in zip(names, new_cache):
            outputs[k_name], outputs[v_name] = k, v
        return outputs

    module = tf.Module()
    # Keras 3 weights wrap tf.Variables; the SavedModel must track those to freeze them into the graph.
    module.weights = [weight.value for weight in model.weights]
    functions = {}
    for seq in prefill_lengths:
        def prefill(inputs):
            return step(inputs, decode=False)

        prefill.__name__ = f"prefill_{seq}"
        functions[prefill.__name__] = tf.function(prefill, input_signature=[specs(seq)]).get_concrete_function()

    def decode(inputs):
        return step(inputs, decode=True)

    functions["decode"] = tf.function(decode, input_signature=[specs(1)]).get_concrete_function()
    return module, functions


def _converter(saved_model_dir, signature_names, quantize):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=list(signature_names))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # fail rather than add Flex ops
    # Weights go after the flatbuffer (offset buffers): no 2 GB flatbuffer limit (a 7B model), and
    # the converter skips its Python re-serialisation passes (-0.9 GB peak and half the time on
    # the 175M model). LiteRT, ai-edge-quantizer and LiteRT-LM read this layout.
    converter._experimental_use_buffer_offset = True
    if quantize in ("fp16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    return converter


def _require_quantizer():
    try:
        from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    except ImportError as error:
        raise ImportError(
            f"--quantize int4 needs ai-edge-quantizer: pip install 'tf_mistral[export]' ({error})"
        ) from None
    return qtyping, quantizer, recipe_manager


def quantize_int4(float_model, vocab_size, block_size=INT4_BLOCK_SIZE):
    """int4 blockwise weights (symmetric, one scale per `block_size` values) with ai-edge-quantizer.

    Every fully-connected layer (the projections and `lm_head`) and the token embedding (first
    rewritten from GATHER to EMBEDDING_LOOKUP, see `embedding_lookup.py`) get int4 weights;
    activations stay float32 and the kernels quantize them on the fly (dynamic range). Returns the
    quantized flatbuffer bytes.
    """
    qtyping, quantizer, recipe_manager = _require_quantizer()
    from tf_mistral.export.embedding_lookup import gathers_to_embedding_lookups

    float_model = gathers_to_embedding_lookups(float_model, vocab_size)
    granularity = getattr(qtyping.QuantGranularity, f"BLOCKWISE_{block_size}")
    recipes = recipe_manager.RecipeManager()
    for operation in (qtyping.TFLOperationName.FULLY_CONNECTED, qtyping.TFLOperationName.EMBEDDING_LOOKUP):
        recipes.add_dynamic_config(regex=".*", operation_name=operation, num_bits=4, granularity=granularity)
    model = quantizer.Quantizer(float_model, recipes.get_quantization_recipe())
    return bytes(model.quantize().quantized_model)


def operator_names(model_content):
    """Names of the operators a flatbuffer uses: builtin names, or `CUSTOM:<name>` (Flex ops are
    custom ops named `Flex...`)."""
    from tensorflow.lite.python import schema_py_generated as schema

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


def check_builtin_ops(model_content):
    """Raises ValueError when the model has custom or Flex (TF) ops that stock LiteRT lacks."""
    custom = sorted(name for name in operator_names(model_content) if name.startswith("CUSTOM:"))
    if custom:
        raise ValueError(f"the TFLite model uses non-builtin ops {custom}; LiteRT(-LM) cannot run it as is")


def _stored_as(dtype):
    """A Keras dtype policy computing in float32 over weights stored as `dtype`: a bf16 / fp16
    checkpoint stays 16-bit in the model and the SavedModel the converter reads (its weights are
    exactly representable, so the float32 graph is unchanged); the converter folds the casts."""
    import keras

    class StoredAs(keras.DTypePolicy):
        @property
        def variable_dtype(self):
            return dtype

    return StoredAs("float32")


def _load_model(checkpoint):
    from tf_mistral import MistralConfig, TFMistralForCausalLM

    if isinstance(checkpoint, TFMistralForCausalLM):
        if checkpoint.compute_dtype != "float32":
            raise ValueError(
                f"the model computes in {checkpoint.compute_dtype}; TFLite export traces float32: "
                "load it with from_pretrained(path, dtype='float32')"
            )
        return checkpoint
    if not os.path.isfile(os.path.join(str(checkpoint), "config.json")):
        raise FileNotFoundError(f"checkpoint folder {checkpoint!r} does not exist or has no config.json")
    stored = MistralConfig.from_json_file(str(checkpoint)).torch_dtype
    policy = _stored_as(stored) if stored in ("bfloat16", "float16") else "float32"
    return TFMistralForCausalLM.from_pretrained(str(checkpoint), dtype=policy, progress=False)


def export_tflite(
    checkpoint,
    output,
    quantize="none",
    prefill_lengths=None,
    cache_length=1024,
    litertlm=False,
    tokenizer=None,
    progress=True,
):
    """Converts a causal LM to a `.tflite` file with `prefill_{N}` and `decode` signatures.

    Args:
        checkpoint: HF checkpoint folder, or a float32 `TFMistralForCausalLM`.
        output: path of the `.tflite` file to write.
        quantize: "none" (float32), "fp16" (float16 weights), "int8" (dynamic-range int8, the TF
            converter) or "int4" (int4 blockwise weights, ai-edge-quantizer).
        prefill_lengths: chunk lengths N of the `prefill_{N}` signatures (each <= the cache);
            default 32, 128, 512 clipped to the cache.
        cache_length: KV cache slots; a sliding window caps it (rolling buffer).
        litertlm: also write a LiteRT-LM bundle `<output stem>.litertlm` (model + tokenizer +
            metadata).
        tokenizer: SentencePiece model for the bundle (a path, a `MistralTokenizer`, or None for
            the checkpoint's tokenizer.model, else the default Mistral tokenizer).
        progress: print the stages (tracing, converting, quantizing, writing).

    Returns:
        dict: `path`, `litertlm` (bundle path or None), `bytes`, `cache_length`, `prefill_lengths`,
        `ops` (operator names), `peak_rss_gb`, `stages` (message, seconds, peak RSS GB).
    """
    if quantize not in QUANTIZE_OPTIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_OPTIONS)}; got {quantize!r}")
    if quantize == "int4":
        _require_quantizer()  # fail before the slow part when ai-edge-quantizer is missing
    if litertlm:
        from tf_mistral.export import litertlm as bundle

        bundle.require_builder()  # fail before the slow part when litert-lm-builder is missing
    from tf_mistral import TFMistralForCausalLM

    report = Progress("tflite", progress)
    report("loading the checkpoint (float32 compute; bf16 / fp16 weights stay 16-bit)")
    model = _load_model(checkpoint)
    config = model.config
    slots, lengths = resolve_lengths(config, cache_length, prefill_lengths)
    output = os.fspath(output)

    import tensorflow as tf

    report(f"tracing {['prefill_%d' % n for n in lengths] + ['decode']} with a {slots}-slot cache")
    module, functions = signature_module(model, slots, lengths)
    workdir = tempfile.mkdtemp(prefix="tf_mistral_tflite_")
    try:
        saved_model = os.path.join(workdir, "saved_model")
        tf.saved_model.save(module, saved_model, signatures=functions)
        del module, functions
        if not isinstance(checkpoint, TFMistralForCausalLM):
            del model  # the converter reads the SavedModel; free the Keras copy of the weights
        gc.collect()
        report("converting (TF -> TFLite builtins)")
        converter = _converter(saved_model, [f"prefill_{n}" for n in lengths] + ["decode"], quantize)
        data = converter.convert()
        del converter
        gc.collect()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if quantize == "int4":
        report(f"quantizing (int4 blockwise, block {INT4_BLOCK_SIZE}, ai-edge-quantizer)")
        data = quantize_int4(data, config.vocab_size)
    check_builtin_ops(data)
    report(f"writing {output}")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    partial = output + ".partial"
    with open(partial, "wb") as file:
        file.write(data)
    os.replace(partial, output)
    write_sidecar(output, config, slots, lengths, quantize)
    result = dict(
        path=output, litertlm=None, bytes=len(data), cache_length=slots, prefill_lengths=lengths,
        ops=sorted(operator_names(data)), peak_rss_gb=peak_rss_gb(),
    )
    del data
    if litertlm:
        report("writing the LiteRT-LM bundle")
        if tokenizer is None and not isinstance(checkpoint, TFMistralForCausalLM):
            tokenizer = checkpoint
        result["litertlm"] = bundle.build_bundle(output, config, tokenizer=tokenizer, cache_length=slots)
    report(f"done: {result['bytes'] / 2**20:.1f} MiB")
    result["stages"] = report.stages
    return result
