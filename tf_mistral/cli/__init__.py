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

This package is a lookup table: each verb is a module `tf_mistral.cli.<module>` with
`add_flags(parser)` and `run(args)`. Only the module of the verb on the command line is imported
(`importlib`, after TensorFlow's quiet start-up for the verbs that use it), so `tf-mistral info`
and `bench` start without TensorFlow, and each verb's module imports what it uses at its top.
"""

import argparse
import collections
import importlib
import os
import sys
from types import ModuleType

from tf_mistral.cli.shared import UsageError
from tf_mistral.silence import silenced_stderr

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

Verb = collections.namedtuple("Verb", ["module", "help", "tensorflow"])
Verb.__doc__ = """One sub-command: `tf_mistral.cli.<module>` runs it; `help` is its line in
`tf-mistral --help`; `tensorflow`: TensorFlow is imported (quietly) before it runs."""

VERBS = {
    "info": Verb("info", "show a checkpoint's or preset's config, parameter count and memory needs", False),
    "convert": Verb("convert", "rewrite a checkpoint in another dtype and/or shard size (HF layout)", True),
    "generate": Verb("generate", "complete a prompt (or answer a chat message) with the Keras model, a SavedModel "
                                 "or a .tflite file, streaming the text", True),
    "chat": Verb("chat", "talk with an instruct model, turn by turn (empty line or Ctrl-D ends)", True),
    "classify": Verb("classify", "label texts with a sequence-classification checkpoint", True),
    "export saved-model": Verb("export_saved_model", "write a TF Serving SavedModel (BASE/NAME/VERSION/, "
                                                     "text-in/text-out signatures, tokenizer in-graph)", True),
    "export tflite": Verb("export_tflite", "write a .tflite with prefill_N / decode signatures over an external "
                                           "KV cache (LiteRT, LiteRT-LM)", True),
    "bench": Verb("bench", "run a benchmark script (one at a time: waits for the others); it writes its table "
                           "into docs/", False),
    "demo": Verb("demo", "the main job: build (or load) a model, fine-tune it on a short text, generate, save "
                         "it, export a SavedModel and a TFLite file and run all three", True),
}
GROUPS = {"export": "write a checkpoint as a TF Serving SavedModel or a TFLite (LiteRT) file"}


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and its companions, and starts its CPU device, without their C++
    start-up lines (oneDNN, CUDA stubs, CPU features)."""
    with silenced_stderr():
        import tensorflow
        import tensorflow_text  # noqa: F401

        tensorflow.constant(0)  # device start-up ("failed call to cuInit" on CPU machines)


def named_verb(argv: list[str]) -> str | None:
    """The verb `argv` names ("generate", "export tflite"), read from its first words that are not
    flags (the top level and the groups take no flag with a value); None when it names none."""
    words = [word for word in argv if not word.startswith("-")]
    if not words:
        return None
    if words[0] in GROUPS and len(words) > 1:
        return f"{words[0]} {words[1]}"
    return words[0] if words[0] in VERBS else None


def _add_debug_flag(parser: argparse.ArgumentParser, top: bool = False) -> None:
    # Sub-parsers leave it unset unless given, so `tf-mistral --debug VERB` keeps the top's value.
    parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="show tracebacks")


def import_verb(name: str, quiet: bool) -> ModuleType:
    """The module of verb `name`; TensorFlow is imported first, quietly unless not `quiet`, for a
    verb that uses it."""
    verb = VERBS[name]
    if verb.tensorflow and quiet:
        import_tensorflow_quietly()
    return importlib.import_module(f"tf_mistral.cli.{verb.module}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser for `argv`: every verb with its help line, and the flags of the one `argv` names
    (its module is imported here; TensorFlow's start-up lines show only with `--debug`)."""
    parser = argparse.ArgumentParser(prog="tf-mistral", description="Mistral-7B for TensorFlow / Keras")
    _add_debug_flag(parser, top=True)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    groups = {}
    chosen = named_verb(argv)
    for name, verb in VERBS.items():
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:
            parent = sub.add_parser(group, help=GROUPS[group], description=GROUPS[group])
            _add_debug_flag(parent)
            groups[group] = parent.add_subparsers(dest="sub_verb", metavar="VERB", required=True)
        child = (groups[group] if group else sub).add_parser(leaf, help=verb.help, description=verb.help)
        _add_debug_flag(child)
        child.set_defaults(verb_name=name)
        if name == chosen:
            module = import_verb(name, quiet="--debug" not in argv)
            module.add_flags(child)
            child.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line `argv` (default sys.argv[1:]); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help (0) or a usage error (2), already printed by argparse
        return exit.code if isinstance(exit.code, int) else 2
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
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
