"""`tf-mistral generate`: a prompt (or one chat message) completed by the Keras model, a SavedModel
or a .tflite file, the text streamed to stdout and a summary line to stderr."""

import argparse
import contextlib
import sys

from tf_mistral import TFMistralForCausalLM, arguments, backends
from tf_mistral.cli.loading import checkpoint_tokenizer, load_checkpoint
from tf_mistral.cli.shared import (
    UsageError,
    add_checkpoint_flag,
    add_quantize_flag,
    add_sampling_flags,
    sampling_kwargs,
)
from tf_mistral.silence import silenced_stderr
from tf_mistral.tflite_runner import TFLiteRunner
from tf_mistral.tokenizer import MistralTokenizer


def add_flags(p: argparse.ArgumentParser) -> None:
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


def prompt_ids(tokenizer: MistralTokenizer, text: str, chat: bool) -> list[int]:
    """Token ids (BOS first) of a plain prompt, or of a one-message chat."""
    if chat:
        return [
            int(i) for i in tokenizer.apply_chat_template([{"role": "user", "content": text}], return_tensors="np")[0]
        ]
    return tokenizer.encode(text)


def run(args: argparse.Namespace) -> None:
    sampling = sampling_kwargs(args)
    if not (args.checkpoint or args.tflite or args.saved_model):
        raise UsageError("give --checkpoint DIR (Keras), --tflite FILE or --saved-model DIR")
    if args.quantize != "none" and (args.tflite or args.saved_model):
        raise UsageError("--quantize applies to the Keras model (--checkpoint alone); an exported file keeps "
                         "the weights it was exported with (tf-mistral export tflite --quantize int8)")
    if args.tflite:
        with silenced_stderr():  # LiteRT's accelerator registration lines
            runtime = TFLiteRunner(args.tflite, num_threads=args.threads)
        tokenizer = checkpoint_tokenizer(args.checkpoint, runtime.vocab_size)
        generate = backends.tflite_generate
    elif args.saved_model:
        with silenced_stderr():  # sentencepiece's start-up line as the graph's tokenizer loads
            runtime = backends.load_saved_model(args.saved_model)
        tokenizer = checkpoint_tokenizer(args.checkpoint)  # the signature checks the ids against its vocabulary
        generate = backends.saved_model_generate
    else:
        tokenizer, runtime = load_checkpoint(TFMistralForCausalLM, args.checkpoint, args.dtype, args.quantize)
        generate = backends.keras_generate
    ids = prompt_ids(tokenizer, args.prompt, args.chat)
    if not args.chat:
        print(tokenizer.decode(ids, skip_special_tokens=True), end="", flush=True)
    with silenced_stderr() if args.tflite else contextlib.nullcontext():  # LiteRT's "Created XNNPACK delegate"
        result = backends.print_generation(generate, runtime, tokenizer, ids, **sampling)
    print(f"[{result.summary()}]", file=sys.stderr)
