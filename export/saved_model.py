"""SavedModel export for TF Serving: `BASE/NAME/VERSION/`, written atomically.

    tf-mistral export saved-model --checkpoint DIR --output serving/mistral [--version N]
        [--max-length 4096] [--max-new-tokens 256] [--dtype bfloat16] [--xla]

    from tf_mistral.export import saved_model
    saved_model.export_saved_model("ckpt/", "serving/mistral")

TF Serving polls `BASE/NAME` for numbered versions and loads the highest. The export writes into a
hidden temporary folder beside them (`.tmp-VERSION-PID-*`, which TF Serving ignores: not a number)
and renames it into place when complete, so the server never sees half a model. The version is the
next free number unless given; an existing version is replaced only with `overwrite=True`. An
export killed midway leaves its folder (a whole model); the next export into `BASE/NAME` removes
the folders of processes that no longer run.

The graph holds only TensorFlow core and TF Text ops (checked after saving; XLA ops are refused
unless `xla=True`). `xla=True` compiles the generation loop with `jit_compile`: such a model runs
on TF Serving only when the server is started with `--xla_cpu_compilation_enabled=true`.
Signatures are described in `tf_mistral.export.serving_signatures`.
"""

from collections.abc import Iterable
import gc
import json
import os
import shutil
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import tf_mistral
from tf_mistral.export import serving_signatures
from tf_mistral.export.progress import Progress, peak_rss_gb
from tf_mistral.export.saved_model_versions import publish, remove_dead_exports, resolve_version, staging_folder
from tf_mistral.tokenizer import MistralTokenizer, load_tokenizer

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_MAX_LENGTH = 4096
DEFAULT_MAX_NEW_TOKENS = 256
_ARCHITECTURES = {
    "MistralForCausalLM": "TFMistralForCausalLM",
    "MistralForSequenceClassification": "TFMistralForSequenceClassification",
}


# ----------------------------------------------------------------------------------------------
# The graph's ops


def saved_model_ops(path: str | os.PathLike) -> set[str]:
    """Op types of every node in a SavedModel's graph and its function library (all functions)."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as file:
        proto.ParseFromString(file.read())
    ops = set()
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        functions = {function.signature.name for function in graph.library.function}
        ops.update(node.op for node in graph.node)
        for function in graph.library.function:
            ops.update(node.op for node in function.node_def)
        ops -= functions  # calls of library functions are listed by the function's name
    return ops


def xla_ops(ops: Iterable[str]) -> list[str]:
    """The ops of `ops` that are XLA's (`Xla*`, `_Xla*`): stock TF Serving runs them only via XLA."""
    return sorted(op for op in ops if op.startswith(("Xla", "_Xla")))


# ----------------------------------------------------------------------------------------------
# Export


def _load_model(checkpoint, dtype):
    """(model, checkpoint folder or None) from a folder (its config's architecture picks the class)
    or a model instance."""
    if isinstance(checkpoint, (tf_mistral.TFMistralForCausalLM, tf_mistral.TFMistralForSequenceClassification)):
        return checkpoint, None
    folder = os.fspath(checkpoint)
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{folder} has no config.json: pass a Hugging Face Mistral checkpoint folder")
    with open(config_file) as file:
        architecture = (json.load(file).get("architectures") or ["MistralForCausalLM"])[0]
    if architecture not in _ARCHITECTURES:
        raise ValueError(
            f"{folder} is a {architecture}; the SavedModel export serves {sorted(_ARCHITECTURES)} "
            "(generation or sequence classification)"
        )
    model_class = getattr(tf_mistral, _ARCHITECTURES[architecture])
    return model_class.from_pretrained(folder, dtype=dtype, progress=False), folder


def _check_lengths(config, max_length, max_new_tokens):
    for name, value in (("max_length", max_length), ("max_new_tokens", max_new_tokens)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_length > config.max_position_embeddings:
        raise ValueError(
            f"max_length {max_length} exceeds the model's max_position_embeddings {config.max_position_embeddings}"
        )
    if max_new_tokens >= max_length:
        raise ValueError(
            f"max_new_tokens ({max_new_tokens}) must be below max_length ({max_length}): a prompt needs "
            "at least one position"
        )


def export_saved_model(
    checkpoint: "str | os.PathLike | tf_mistral.TFMistralForCausalLM | tf_mistral.TFMistralForSequenceClassification",
    output: str | os.PathLike,
    version: int | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    dtype: str = "bfloat16",
    xla: bool = False,
    tokenizer: MistralTokenizer | str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Exports a checkpoint as a TF Serving SavedModel at `output/VERSION/`.

    Args:
        checkpoint: HF checkpoint folder (MistralForCausalLM or MistralForSequenceClassification),
            or a loaded `TFMistralForCausalLM` / `TFMistralForSequenceClassification`.
        output: the model's base folder `BASE/NAME` (TF Serving's `--model_base_path`).
        version: integer version; default the next free one.
        max_length: most positions per row (prompt + reply). A request's KV cache has the
            bucket of slots its prompt + max_new_tokens need (`generation.buckets.cache_length`),
            at most `min(max_length, sliding_window)`: always that many with `xla`.
            Classifiers cut texts to this many tokens.
        max_new_tokens: most new tokens per request, and what `serving_default` generates.
        dtype: "bfloat16" (default; half the memory, slower on CPU), "float32" or "float16": the
            variables are stored and computed in it, loaded from the checkpoint without a float32
            detour. Ignored for a model instance (its own dtype is used).
        xla: compile the generation loop with XLA (needs TF Serving's `--xla_cpu_compilation_enabled`).
        tokenizer: a `MistralTokenizer` or a tokenizer.model path; default the checkpoint's
            tokenizer.model, else the embedded Mistral v0.1 tokenizer.
        overwrite: replace `version` when it exists.
        progress: print the stages.

    Returns:
        dict: `path` (the version folder), `version`, `signatures` (names), `ops` (op types),
        `cache_length` (the longest cache), `stages` ((stage, seconds, peak RSS GB)), `peak_rss_gb`.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    base = os.fspath(output)
    version = resolve_version(base, version, overwrite)  # fail before the slow part
    report = Progress("saved_model", progress)
    for name in remove_dead_exports(base):  # free their disk space before writing another model
        report(f"removed {name}, left by an export that did not finish")
    report(f"loading {checkpoint if isinstance(checkpoint, (str, os.PathLike)) else 'the model'} ({dtype})")
    model, folder = _load_model(checkpoint, dtype)
    config = model.config
    generation = hasattr(model, "forward_with_cache")
    _check_lengths(config, max_length, max_new_tokens if generation else 1)
    tokenizer = load_tokenizer(tokenizer, checkpoint=folder, vocab_size=config.vocab_size)

    if generation:
        module = serving_signatures.GenerationSignatures(model, tokenizer, max_length, max_new_tokens, xla=xla)
        cache_length = module.cache_length
    else:
        module = serving_signatures.ClassificationSignatures(model, tokenizer, max_length)
        cache_length = None
    slots = f"{cache_length} cache slots" if xla else f"up to {cache_length} cache slots per request"
    report(f"tracing signatures ({'XLA loop' if xla else 'no XLA'}, {slots if generation else 'no cache'})")
    os.makedirs(base, exist_ok=True)
    staging = staging_folder(base, version)
    try:
        signatures = module.signatures()
        names = list(signatures)
        report(f"writing the SavedModel ({', '.join(names)})")
        tf.saved_model.save(module, staging, signatures=signatures)
        del signatures, module
        gc.collect()
        ops = saved_model_ops(staging)
        forbidden = xla_ops(ops)
        if forbidden and not xla:
            raise RuntimeError(
                f"the exported graph has XLA ops {forbidden}, which stock TF Serving cannot run without XLA"
            )
        report(f"publishing version {version}")
        path = publish(staging, base, version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report(f"done: {path}")
    return dict(
        path=path, version=version, signatures=names, ops=sorted(ops), cache_length=cache_length,
        stages=report.stages, peak_rss_gb=peak_rss_gb(),
    )
