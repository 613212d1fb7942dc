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

import contextlib
import gc
import json
import os
import re
import shutil
import tempfile

from tf_mistral import arguments
from tf_mistral.atomic import pid_alive
from tf_mistral.export.progress import Progress, peak_rss_gb

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_MAX_LENGTH = 4096
DEFAULT_MAX_NEW_TOKENS = 256
_TEMPORARY = re.compile(r"\.(tmp|old)-\d+-(?P<pid>\d+)-\w+")  # an export's staging or retired folder
_ARCHITECTURES = {
    "MistralForCausalLM": "TFMistralForCausalLM",
    "MistralForSequenceClassification": "TFMistralForSequenceClassification",
}


# ----------------------------------------------------------------------------------------------
# Versions


def existing_versions(base):
    """Sorted version numbers under `base` (folders named by an integer, as TF Serving reads them)."""
    if not os.path.isdir(base):
        return []
    return sorted(int(name) for name in os.listdir(base) if name.isdigit() and os.path.isdir(os.path.join(base, name)))


def resolve_version(base, version, overwrite):
    """The version to write: `version`, or one above the highest existing (1 when none)."""
    versions = existing_versions(base)
    if version is None:
        return (versions[-1] + 1) if versions else 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}")
    if version in versions and not overwrite:
        raise FileExistsError(
            f"{os.path.join(base, str(version))} already exists: pick another --version, leave it out for the "
            f"next free one ({versions[-1] + 1}), or pass --overwrite to replace it"
        )
    return version


def staging_folder(base, version):
    """A new hidden folder `base/.tmp-VERSION-PID-XXXXXXXX` to write the export into (readable by
    a server running as another user); the pid tells later exports whether it is still in use."""
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-{os.getpid()}-", dir=base)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private
    return staging


def remove_dead_exports(base):
    """Removes the staging (`.tmp-VERSION-PID-*`) and retired (`.old-VERSION-PID-*`) folders under
    `base` whose process no longer runs: what exports killed midway left. Returns their names."""
    if not os.path.isdir(base):
        return []
    dead = [name for name in sorted(os.listdir(base))
            if (match := _TEMPORARY.fullmatch(name)) and not pid_alive(int(match["pid"]))]
    for name in dead:
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    return dead


def publish(staging, base, version):
    """Renames the finished `staging` folder to `base/version`; an old version is moved aside
    first and deleted after (the only moment TF Serving may find the version missing)."""
    target = os.path.join(base, str(version))
    retired = None
    if os.path.exists(target):
        retired = tempfile.mkdtemp(prefix=f".old-{version}-{os.getpid()}-", dir=base)
        os.rename(target, os.path.join(retired, "model"))
    os.rename(staging, target)
    if retired:
        shutil.rmtree(retired, ignore_errors=True)
    return target


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------------------------
# The graph's ops


def saved_model_ops(path):
    """Op types of every node in a SavedModel's graph and its function library (all functions)."""
    from tensorflow.core.protobuf import saved_model_pb2

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


def xla_ops(ops):
    """The ops of `ops` that are XLA's (`Xla*`, `_Xla*`): stock TF Serving runs them only via XLA."""
    return sorted(op for op in ops if op.startswith(("Xla", "_Xla")))


# ----------------------------------------------------------------------------------------------
# Export


def _load_model(checkpoint, dtype):
    """(model, checkpoint folder or None) from a folder (its config's architecture picks the class)
    or a model instance."""
    import tf_mistral

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


def _load_tokenizer(tokenizer, folder, vocab_size):
    """A MistralTokenizer: given, from a path, from the checkpoint's tokenizer.model, else the
    embedded Mistral v0.1 tokenizer. Its ids must fit the model's vocabulary."""
    from tf_mistral.tokenizer import MistralTokenizer

    if not isinstance(tokenizer, MistralTokenizer):
        if tokenizer is None and folder and os.path.isfile(os.path.join(folder, "tokenizer.model")):
            tokenizer = folder
        tokenizer = MistralTokenizer.from_pretrained(tokenizer)
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} pieces but the model's vocab_size is {vocab_size}: "
            "pass the checkpoint's own tokenizer (tokenizer=PATH, or tokenizer.model in the checkpoint folder)"
        )
    return tokenizer


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
    checkpoint,
    output,
    version=None,
    max_length=DEFAULT_MAX_LENGTH,
    max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
    dtype="bfloat16",
    xla=False,
    tokenizer=None,
    overwrite=False,
    progress=True,
):
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
    tokenizer = _load_tokenizer(tokenizer, folder, config.vocab_size)

    import tensorflow as tf

    from tf_mistral import cache as kv_cache
    from tf_mistral.export import serving_signatures

    if generation:
        module = serving_signatures.GenerationSignatures(model, tokenizer, max_length, max_new_tokens, xla=xla)
        trace_scope, cache_length = (contextlib.nullcontext if xla else kv_cache.core_op_writes), module.cache_length
    else:
        module = serving_signatures.ClassificationSignatures(model, tokenizer, max_length)
        trace_scope, cache_length = contextlib.nullcontext, None
    slots = f"{cache_length} cache slots" if xla else f"up to {cache_length} cache slots per request"
    report(f"tracing signatures ({'XLA loop' if xla else 'no XLA'}, {slots if generation else 'no cache'})")
    os.makedirs(base, exist_ok=True)
    staging = staging_folder(base, version)
    try:
        with trace_scope():
            signatures = module.signatures()
            names = list(signatures)
            report(f"writing the SavedModel ({', '.join(names)})")
            tf.saved_model.save(module, staging, signatures=signatures)
        del signatures, module
        gc.collect()
        ops = saved_model_ops(staging)
        forbidden = xla_ops(ops)
        if forbidden and not xla:
            raise RuntimeError(f"the exported graph has XLA ops {forbidden}, which stock TF Serving cannot run without XLA")
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


# ----------------------------------------------------------------------------------------------
# Command line (`tf-mistral export saved-model`)


def add_arguments(parser):
    """Adds the `export saved-model` flags to an argparse parser."""
    parser.add_argument("--checkpoint", metavar="DIR", required=True, help="Hugging Face checkpoint folder")
    parser.add_argument("--output", metavar="BASE/NAME", required=True,
                        help="model folder TF Serving watches (--model_base_path); versions go inside")
    parser.add_argument("--version", type=arguments.non_negative_int,
                        help="version number (default: the next free one)")
    parser.add_argument("--overwrite", action="store_true", help="replace --version if it exists")
    parser.add_argument("--max-length", type=arguments.positive_int, default=DEFAULT_MAX_LENGTH,
                        help=f"most tokens per row, prompt + reply (default {DEFAULT_MAX_LENGTH})")
    parser.add_argument("--max-new-tokens", type=arguments.positive_int,
                        help="most new tokens per request; serving_default makes up to this many (default "
                             f"{DEFAULT_MAX_NEW_TOKENS}, or half of a --max-length not above it)")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--xla", action="store_true",
                        help="XLA-compile generation (TF Serving then needs --xla_cpu_compilation_enabled=true)")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer.model (default: the checkpoint's, else Mistral v0.1's)")


def default_max_new_tokens(max_length):
    """`--max-new-tokens` when not given: DEFAULT_MAX_NEW_TOKENS if it fits below `max_length`, else
    half of `max_length` (the other half for the prompt)."""
    return DEFAULT_MAX_NEW_TOKENS if DEFAULT_MAX_NEW_TOKENS < max_length else max(max_length // 2, 1)


def run(args):
    """Runs `export saved-model` from parsed arguments; prints where the model went."""
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(args.max_length)
        if max_new_tokens != DEFAULT_MAX_NEW_TOKENS:
            print(f"--max-new-tokens defaults to {max_new_tokens} here, half of --max-length {args.max_length} (the "
                  f"usual default, {DEFAULT_MAX_NEW_TOKENS}, must be below it); pass --max-new-tokens to choose")
    result = export_saved_model(
        args.checkpoint, args.output, version=args.version, max_length=args.max_length,
        max_new_tokens=max_new_tokens, dtype=args.dtype, xla=args.xla, tokenizer=args.tokenizer,
        overwrite=args.overwrite,
    )
    print(f"signatures: {', '.join(result['signatures'])}")
    if args.xla:
        print("XLA export: start tensorflow_model_server with --xla_cpu_compilation_enabled=true")
    return result
