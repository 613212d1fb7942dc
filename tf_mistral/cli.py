"""The `tf-mistral` command.

    tf-mistral demo                                  the main job: train, generate, export, run
    tf-mistral info --preset mistral_7b_v0.1         config, parameters, memory
    tf-mistral generate --checkpoint DIR "Once upon" (or --tflite FILE / --saved-model DIR)
    tf-mistral chat --checkpoint DIR
    tf-mistral classify --checkpoint DIR "text" ...
    tf-mistral convert --checkpoint DIR --output DIR --dtype bfloat16
    tf-mistral export saved-model --checkpoint DIR --output serving/mistral
    tf-mistral export tflite --checkpoint DIR --output model.tflite --quantize int8
    tf-mistral bench {generate,tokenizer,memory,tflite,serving,train} [ARGS]

Every verb has `--help`. Exit codes: 0 success, 1 the work failed (the message says why),
2 the command line was wrong. Errors go to stderr without a traceback unless `--debug`.
Each verb is a function `verb(args)` registered with `@verb(name, flags, help)`, where
`flags(parser)` adds its flags; a name with a space ("export tflite") is a sub-verb.
"""

import argparse
import contextlib
import os
import sys

from tf_mistral import arguments

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VERBS = {}
GROUPS = {"export": "write a checkpoint as a TF Serving SavedModel or a TFLite (LiteRT) file"}
BENCHES = ("generate", "tokenizer", "memory", "tflite", "serving", "train")
BENCH_LOCK = "/tmp/tf_mistral_bench.lock"


def verb(name, flags, help, tensorflow=True):
    """Registers `function(args)` as the sub-command `name`; `flags(parser)` adds its flags.

    `tensorflow=False`: the verb does not import TensorFlow (its start-up is skipped)."""

    def register(function):
        VERBS[name] = (function, flags, help, tensorflow)
        return function

    return register


@contextlib.contextmanager
def silenced_stderr():
    """Sends file descriptor 2 to /dev/null: C++ libraries (TensorFlow, sentencepiece, LiteRT)
    write start-up lines there that no log level reaches. Python errors surface after the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow_quietly():
    """Imports TensorFlow and its companions, and starts its CPU device, without their C++
    start-up lines (oneDNN, CUDA stubs, CPU features)."""
    with silenced_stderr():
        import tensorflow
        import tensorflow_text  # noqa: F401

        import tf_mistral.models  # noqa: F401

        tensorflow.constant(0)  # device start-up ("failed call to cuInit" on CPU machines)


class UsageError(Exception):
    """A command line that cannot work (exit code 2)."""


def human_size(count):
    """Bytes as text in binary units: "512 B", "37.5 MiB", "13.49 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            break
        count /= 1024
    if unit == "B":
        return f"{int(count)} B"
    return f"{count:.2f} {unit}" if count < 100 else f"{count:.1f} {unit}"


# ----------------------------------------------------------------------------------------------
# Shared flags


def add_checkpoint_flag(parser, required=False, help=None):
    parser.add_argument(
        "--checkpoint", metavar="DIR", required=required,
        help=help or "Hugging Face checkpoint folder (config.json, safetensors, tokenizer.model)",
    )


def add_sampling_flags(parser):
    parser.add_argument("--max-new-tokens", type=arguments.positive_int, default=64,
                        help="new tokens per reply (default 64)")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=arguments.positive_float, default=1.0)
    parser.add_argument("--top-k", type=arguments.non_negative_int, default=0,
                        help="0 (or the vocabulary size or more): no top-k filter")
    parser.add_argument("--top-p", type=arguments.probability, default=1.0, help="in (0, 1]; 1: no top-p filter")
    parser.add_argument("--seed", type=arguments.seed, default=0)


def sampling_kwargs(args):
    return dict(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )


def load_tokenizer(checkpoint, vocab_size=None):
    """The checkpoint's tokenizer.model, else the embedded Mistral v0.1 tokenizer.

    `vocab_size`: the model's; a tokenizer with more pieces (ids the model has no row for) is
    refused with a ValueError that says which tokenizer it was and what to do.
    """
    from tf_mistral.tokenizer import MistralTokenizer

    has_file = bool(checkpoint) and os.path.exists(os.path.join(checkpoint, "tokenizer.model"))
    with silenced_stderr():  # sentencepiece's "precompiled_charsmap is empty" line
        tokenizer = MistralTokenizer.from_pretrained(checkpoint if has_file else None)
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise ValueError(_tokenizer_mismatch(checkpoint, has_file, tokenizer.vocab_size, vocab_size))
    return tokenizer


def _tokenizer_mismatch(checkpoint, has_file, pieces, vocab_size):
    """The message for a tokenizer of `pieces` pieces and a model of `vocab_size` ids."""
    if has_file:
        path = os.path.join(checkpoint, "tokenizer.model")
        source, fix = path, f"is it another model's? put this model's own tokenizer.model in {checkpoint}"
    elif checkpoint:
        source = f"the default Mistral v0.1: {checkpoint} has no tokenizer.model"
        fix = f"put the model's tokenizer.model in {checkpoint}"
    else:
        source = "the default Mistral v0.1: no --checkpoint given"
        fix = "pass --checkpoint DIR, a folder holding the model's tokenizer.model"
    return f"the model's vocabulary has {vocab_size} ids but the tokenizer ({source}) has {pieces} pieces: {fix}"


def add_quantize_flag(parser):
    parser.add_argument(
        "--quantize", choices=["none", "int8"], default="none",
        help="int8: Keras int8 weights, quantized while the checkpoint loads (about half the memory of "
             "bfloat16; the model Keras' quantize('int8') gives). It saves memory, not time: TensorFlow decodes "
             "it at bfloat16's speed or slower on CPU, far below LiteRT (docs/scale.md). For int8 speed, export "
             "LiteRT (tf-mistral export tflite --quantize int8) and run it with --tflite. Default none",
    )


def load_checkpoint(model_class, checkpoint, dtype, quantize="none"):
    """(tokenizer, model) of a checkpoint folder, Keras int8 when `quantize` is "int8". The
    tokenizer comes first, checked against the vocab_size of config.json, so that one that does
    not fit fails before the weights load."""
    from tf_mistral.config import MistralConfig

    if not checkpoint:
        raise UsageError("--checkpoint DIR is required (a Hugging Face Mistral folder)")
    tokenizer = load_tokenizer(checkpoint, MistralConfig.from_json_file(checkpoint).vocab_size)
    quantize = None if quantize == "none" else quantize
    return tokenizer, model_class.from_pretrained(checkpoint, dtype=dtype, quantize=quantize)


# ----------------------------------------------------------------------------------------------
# Verbs


def info_flags(p):
    add_checkpoint_flag(p)
    p.add_argument("--preset", help="e.g. mistral_7b_v0.1, mistral_7b_instruct_v0.2, mistral_7b_v0.3")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16", "int8", "int4"])
    p.add_argument("--max-length", type=arguments.positive_int, default=4096,
                   help="tokens of context for the cache estimate")


@verb("info", info_flags, "show a checkpoint's or preset's config, parameter count and memory needs", tensorflow=False)
def info(args):
    from tf_mistral.config import PRESETS, MistralConfig

    if bool(args.checkpoint) == bool(args.preset):
        raise UsageError("give exactly one of --checkpoint DIR or --preset NAME")
    if args.preset and args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; presets: {', '.join(sorted(PRESETS))}")
    config = MistralConfig.from_json_file(args.checkpoint) if args.checkpoint else MistralConfig.from_preset(args.preset)
    params = config.num_parameters()
    bytes_per = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int4": 0.5}
    print(f"{'field':<26}value")
    for field in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window", "rope_theta",
        "rms_norm_eps", "torch_dtype",
    ):
        print(f"{field:<26}{getattr(config, field)}")
    print(f"{'parameters':<26}{params:,} ({params / 1e9:.2f} B)" if params >= 1e9 else
          f"{'parameters':<26}{params:,} ({params / 1e6:.1f} M)")
    window = config.sliding_window or config.max_position_embeddings
    slots = min(args.max_length, window)
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    cache_bytes = 2 if args.dtype != "float32" else 4
    print(f"\nmemory for dtype {args.dtype}:")
    print(f"  weights                 {human_size(params * bytes_per[args.dtype])}")
    print(f"  KV cache, batch 1       {human_size(kv_per_token * slots * cache_bytes)} ({slots} slots)")


def convert_flags(p):
    add_checkpoint_flag(p, required=True)
    p.add_argument("--output", metavar="DIR", required=True)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-shard-size", default="5GB", type=arguments.shard_size, help="largest shard (default 5GB)")


@verb("convert", convert_flags, "rewrite a checkpoint in another dtype and/or shard size (HF layout)")
def convert(args):
    from tf_mistral import TFMistralForCausalLM

    model = TFMistralForCausalLM.from_pretrained(args.checkpoint, dtype=args.dtype)
    # The whole model is in memory before the save starts, and a save switches from the old
    # files to the new ones in one step: --output may be the --checkpoint folder itself.
    model.save_pretrained(args.output, max_shard_size=args.max_shard_size, dtype=args.dtype)
    source = os.path.join(args.checkpoint, "tokenizer.model")
    target = os.path.join(args.output, "tokenizer.model")
    if os.path.exists(source) and not (os.path.exists(target) and os.path.samefile(source, target)):
        import shutil

        shutil.copy(source, target)
    print(f"wrote {args.output}")


def generate_flags(p):
    p.add_argument("prompt", help="the text to continue (or the user message with --chat)")
    add_checkpoint_flag(p, help="Hugging Face checkpoint folder: the Keras model (the default runtime); "
                                "with --tflite / --saved-model only its tokenizer.model is read")
    runtime = p.add_mutually_exclusive_group()
    runtime.add_argument("--tflite", metavar="FILE", help="run an exported .tflite with the LiteRT interpreter")
    runtime.add_argument("--saved-model", metavar="DIR",
                         help="run an exported SavedModel (a version folder, or BASE/NAME: its highest version)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the Mistral chat format")
    p.add_argument("--dtype", default=None, help="Keras dtype policy (default: the checkpoint's)")
    add_quantize_flag(p)
    p.add_argument("--threads", type=arguments.positive_int, default=2, help="LiteRT interpreter threads (--tflite)")
    add_sampling_flags(p)


def prompt_ids(tokenizer, text, chat):
    """Token ids (BOS first) of a plain prompt, or of a one-message chat."""
    if chat:
        return [int(i) for i in tokenizer.apply_chat_template([{"role": "user", "content": text}], return_tensors="np")[0]]
    return tokenizer.encode(text)


@verb("generate", generate_flags, "complete a prompt (or answer a chat message) with the Keras model, "
                                  "a SavedModel or a .tflite file, streaming the text")
def generate(args):
    from tf_mistral import backends

    sampling = sampling_kwargs(args)
    if not (args.checkpoint or args.tflite or args.saved_model):
        raise UsageError("give --checkpoint DIR (Keras), --tflite FILE or --saved-model DIR")
    if args.quantize != "none" and (args.tflite or args.saved_model):
        raise UsageError("--quantize applies to the Keras model (--checkpoint alone); an exported file keeps "
                         "the weights it was exported with (tf-mistral export tflite --quantize int8)")
    if args.tflite:
        from tf_mistral.export.tflite_runner import TFLiteRunner

        with silenced_stderr():  # LiteRT's accelerator registration lines
            runtime = TFLiteRunner(args.tflite, num_threads=args.threads)
        tokenizer = load_tokenizer(args.checkpoint, runtime.vocab_size)
        run = backends.tflite_generate
    elif args.saved_model:
        with silenced_stderr():  # sentencepiece's start-up line as the graph's tokenizer loads
            runtime = backends.load_saved_model(args.saved_model)
        tokenizer = load_tokenizer(args.checkpoint)  # the signature checks the ids against its vocabulary
        run = backends.saved_model_generate
    else:
        from tf_mistral import TFMistralForCausalLM

        tokenizer, runtime = load_checkpoint(TFMistralForCausalLM, args.checkpoint, args.dtype, args.quantize)
        run = backends.keras_generate
    ids = prompt_ids(tokenizer, args.prompt, args.chat)
    if not args.chat:
        print(tokenizer.decode(ids, skip_special_tokens=True), end="", flush=True)
    with silenced_stderr() if args.tflite else contextlib.nullcontext():  # LiteRT's "Created XNNPACK delegate"
        result = backends.print_generation(run, runtime, tokenizer, ids, **sampling)
    print(f"[{result.summary()}]", file=sys.stderr)


def chat_flags(p):
    add_checkpoint_flag(p)
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--dtype", default=None)
    add_quantize_flag(p)
    add_sampling_flags(p)


@verb("chat", chat_flags, "talk with an instruct model, turn by turn (empty line or Ctrl-D ends)")
def chat(args):
    from tf_mistral import TFMistralForCausalLM, backends

    sampling = sampling_kwargs(args)
    tokenizer, model = load_checkpoint(TFMistralForCausalLM, args.checkpoint, args.dtype, args.quantize)
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        messages.append({"role": "user", "content": text})
        ids = [int(i) for i in tokenizer.apply_chat_template(messages, return_tensors="np")[0]]
        print("mistral> ", end="", flush=True)
        result = backends.print_generation(backends.keras_generate, model, tokenizer, ids, **sampling)
        print(f"[{result.summary()}]", file=sys.stderr)
        messages.append({"role": "assistant", "content": tokenizer.decode(result.new_ids, skip_special_tokens=True)})


def classify_flags(p):
    add_checkpoint_flag(p, required=True)
    p.add_argument("texts", nargs="+")
    p.add_argument("--dtype", default=None)


@verb("classify", classify_flags, "label texts with a sequence-classification checkpoint")
def classify(args):
    import numpy as np

    from tf_mistral import TFMistralForSequenceClassification

    tokenizer, model = load_checkpoint(TFMistralForSequenceClassification, args.checkpoint, args.dtype)
    batch = tokenizer(args.texts, return_tensors="np", padding=True)
    logits = np.asarray(model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits, np.float32)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for text, row in zip(args.texts, probs):
        label = model.config.id2label[int(row.argmax())]
        print(f"{label}\t{row.max():.3f}\t{text}")


def export_saved_model_flags(p):
    from tf_mistral.export import saved_model

    saved_model.add_arguments(p)


@verb("export saved-model", export_saved_model_flags,
      "write a TF Serving SavedModel (BASE/NAME/VERSION/, text-in/text-out signatures, tokenizer in-graph)")
def export_saved_model(args):
    from tf_mistral.export import saved_model

    saved_model.run(args)


def export_tflite_flags(p):
    from tf_mistral.export.tflite_options import (
        DEFAULT_INT4_BLOCK_SIZE, DEFAULT_PREFILL_LENGTHS, INT4_BLOCK_SIZES, QUANTIZE_OPTIONS,
    )

    p.add_argument("--checkpoint", metavar="DIR", required=True, help="Hugging Face checkpoint folder (a causal LM)")
    p.add_argument("--output", metavar="FILE", required=True, help="the .tflite file to write")
    p.add_argument("--quantize", default="none", choices=QUANTIZE_OPTIONS,
                   help="none: float32; fp16: float16 weights; int8: int8 weights (per-row scales); int4: int4 "
                        "weights in blocks (--int4-block-size). Written one tensor at a time: a 7B export needs "
                        "a few GB. Default none")
    p.add_argument("--prefill-lengths", type=arguments.comma_separated_ints, metavar="N,N,...",
                   help=f"prefill signature lengths (default {','.join(map(str, DEFAULT_PREFILL_LENGTHS))}, "
                        "clipped to the cache)")
    p.add_argument("--cache-length", type=arguments.positive_int, default=1024,
                   help="KV cache slots (default 1024; a sliding window caps it)")
    p.add_argument("--int8-weights", type=lambda text: [part for part in text.split(",") if part], default=[],
                   metavar="NAME,NAME,...",
                   help="with --quantize int4: keep in int8 every weight whose Hugging Face name contains one of "
                        "these, e.g. embed_tokens,lm_head (the quality table in docs/tflite.md)")
    p.add_argument("--int4-block-size", type=int, choices=INT4_BLOCK_SIZES,
                   help="with --quantize int4: weights per float16 scale; larger blocks decode faster on CPU and "
                        f"lose a little accuracy (docs/tflite.md). Default {DEFAULT_INT4_BLOCK_SIZE}, or the "
                        "largest that divides a narrow model's sizes")
    p.add_argument("--litertlm", action="store_true", help="also write a LiteRT-LM bundle (.litertlm) beside it")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.model for the bundle (default: the checkpoint's)")


@verb("export tflite", export_tflite_flags,
      "write a .tflite with prefill_N / decode signatures over an external KV cache (LiteRT, LiteRT-LM)")
def export_tflite(args):
    from tf_mistral.export.tflite import export_tflite as export

    result = export(
        args.checkpoint, args.output, quantize=args.quantize, prefill_lengths=args.prefill_lengths,
        cache_length=args.cache_length, litertlm=args.litertlm, tokenizer=args.tokenizer,
        int8_weights=args.int8_weights, int4_block_size=args.int4_block_size,
    )
    print(f"wrote {result['path']} ({human_size(result['bytes'])}, {result['cache_length']} cache slots, "
          f"signatures {', '.join(f'prefill_{n}' for n in result['prefill_lengths'])}, decode)")
    if result["litertlm"]:
        print(f"wrote {result['litertlm']}")


def bench_flags(p):
    p.add_argument("name", choices=BENCHES, help="which benchmark: runs bench/NAME.py")
    p.add_argument("arguments", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="passed to the script (e.g. --help)")


def bench_script(name):
    """bench/NAME.py of the source checkout (the bench scripts are not installed with the package)."""
    import tf_mistral

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(tf_mistral.__file__))), "bench")
    script = os.path.join(folder, f"{name}.py")
    if not os.path.isfile(script):
        raise FileNotFoundError(
            f"{script} does not exist: the benchmarks live in the source checkout (git clone, then "
            "`pip install -e .`); this checkout has "
            f"{sorted(f[:-3] for f in os.listdir(folder) if f.endswith('.py')) if os.path.isdir(folder) else 'no bench/'}"
        )
    return script


@verb("bench", bench_flags, "run a benchmark script (one at a time: waits for the others); it writes "
                            "its table into docs/", tensorflow=False)
def bench(args):
    import fcntl
    import subprocess

    script = bench_script(args.name)
    with open(BENCH_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another benchmark to finish ({BENCH_LOCK})", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        code = subprocess.call([sys.executable, script, *args.arguments])
    if code:
        raise SystemExit(code)


def demo_flags(p):
    from tf_mistral import demo

    add_checkpoint_flag(p, help="run on these real weights instead of building a small model")
    p.add_argument("--output", metavar="DIR", default=demo.DEFAULT_OUTPUT, help=f"where files go (default {demo.DEFAULT_OUTPUT})")
    p.add_argument("--steps", type=arguments.non_negative_int,
                   help=f"fine-tuning steps (default {demo.DEFAULT_STEPS} for the small model, "
                        "0 with --checkpoint; there LoRA is used)")
    p.add_argument("--learning-rate", type=arguments.positive_float, help="default 3e-3 (small model) or 1e-3 (LoRA)")
    p.add_argument("--text", metavar="FILE", help="training text (default: the opening of Alice's Adventures in Wonderland)")
    p.add_argument("--prompt", help="prompt for every runtime (default: the text's first words)")
    p.add_argument("--max-new-tokens", type=arguments.positive_int, default=demo.DEFAULT_NEW_TOKENS,
                   help=f"tokens each runtime generates (default {demo.DEFAULT_NEW_TOKENS})")
    p.add_argument("--quantize", default="int8", choices=["none", "fp16", "int8", "int4"],
                   help="TFLite variant to export and run (default int8)")
    p.add_argument("--dtype", help="Keras dtype for --checkpoint (default: the checkpoint's); the small model is float32")
    p.add_argument("--seed", type=int, default=0)


@verb("demo", demo_flags, "the main job: build (or load) a model, fine-tune it on a short text, generate, save it, "
                          "export a SavedModel and a TFLite file and run all three")
def demo_verb(args):
    from tf_mistral import demo

    demo.run_demo(
        output=args.output, checkpoint=args.checkpoint, steps=args.steps, learning_rate=args.learning_rate,
        text_file=args.text, prompt=args.prompt, max_new_tokens=args.max_new_tokens, quantize=args.quantize,
        dtype=args.dtype, seed=args.seed,
    )


# ----------------------------------------------------------------------------------------------


def _add_debug_flag(parser, top=False):
    # Sub-parsers leave it unset unless given, so `tf-mistral --debug VERB` keeps the top's value.
    parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="show tracebacks")


def build_parser():
    parser = argparse.ArgumentParser(prog="tf-mistral", description="Mistral-7B for TensorFlow / Keras")
    _add_debug_flag(parser, top=True)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    groups = {}
    for name, (function, flags, help, tensorflow) in VERBS.items():
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:
            parent = sub.add_parser(group, help=GROUPS[group], description=GROUPS[group])
            _add_debug_flag(parent)
            groups[group] = parent.add_subparsers(dest="sub_verb", metavar="VERB", required=True)
        child = (groups[group] if group else sub).add_parser(leaf, help=help, description=help)
        _add_debug_flag(child)
        flags(child)
        child.set_defaults(run=function, verb_name=name, tensorflow=tensorflow)
    return parser


def main(argv=None):
    """Runs the command line `argv` (default sys.argv[1:]); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help (0) or a usage error (2), already printed by argparse
        return exit.code if isinstance(exit.code, int) else 2
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    if args.tensorflow and not args.debug:
        import_tensorflow_quietly()
    try:
        args.run(args)
    except UsageError as error:
        print(f"tf-mistral {args.verb_name}: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the command line shows every failure as a message
        if args.debug:
            raise
        print(f"tf-mistral {args.verb_name}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
