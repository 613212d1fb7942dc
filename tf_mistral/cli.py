"""The `tf-mistral` command.

Every verb has `--help`. Exit codes: 0 success, 1 the work failed (the message says why),
2 the command line was wrong. Errors go to stderr without a traceback unless `--debug`.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VERBS = {}


def verb(name, flags, help):
    """Registers `function(args)` as the sub-command `name`; `flags(parser)` adds its flags."""

    def register(function):
        VERBS[name] = (function, flags, help)
        return function

    return register


def import_tensorflow_quietly():
    """Imports TensorFlow and its companions with file descriptor 2 silenced: their C++
    start-up lines (oneDNN, CUDA stubs, CPU features) are written before any log level applies."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
            import tensorflow_text  # noqa: F401

            import tf_mistral.models  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class UsageError(Exception):
    """A command line that cannot work (exit code 2)."""


# ----------------------------------------------------------------------------------------------
# Shared flags


def add_checkpoint_flag(parser, required=False):
    parser.add_argument(
        "--checkpoint", metavar="DIR", required=required,
        help="Hugging Face checkpoint folder (config.json, safetensors, tokenizer.model)",
    )


def add_sampling_flags(parser):
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per reply (default 64)")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0: no top-k filter")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)


def sampling_kwargs(args):
    return dict(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )


def load_tokenizer(checkpoint):
    """The checkpoint's tokenizer.model, else the embedded Mistral v0.1 tokenizer."""
    from tf_mistral.tokenizer import MistralTokenizer

    if checkpoint and os.path.exists(os.path.join(checkpoint, "tokenizer.model")):
        return MistralTokenizer.from_pretrained(checkpoint)
    return MistralTokenizer.from_pretrained()


def load_model(model_class, checkpoint, dtype):
    if not checkpoint:
        raise UsageError("--checkpoint DIR is required (a Hugging Face Mistral folder)")
    return model_class.from_pretrained(checkpoint, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Verbs


def info_flags(p):
    add_checkpoint_flag(p)
    p.add_argument("--preset", help="e.g. mistral_7b_v0.1, mistral_7b_instruct_v0.2, mistral_7b_v0.3")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16", "int8", "int4"])
    p.add_argument("--max-length", type=int, default=4096, help="tokens of context for the cache estimate")


@verb("info", info_flags, "show a checkpoint's or preset's config, parameter count and memory needs")
def info(args):
    from tf_mistral.config import MistralConfig

    if bool(args.checkpoint) == bool(args.preset):
        raise UsageError("give exactly one of --checkpoint DIR or --preset NAME")
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
    print(f"{'parameters':<26}{params:,} ({params / 1e9:.2f} B)")
    window = config.sliding_window or config.max_position_embeddings
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    print(f"\nmemory for dtype {args.dtype}:")
    weights = params * bytes_per[args.dtype]
    cache_dtype = 2 if args.dtype != "float32" else 4
    cache = kv_per_token * min(args.max_length, window) * cache_dtype
    print(f"  weights                 {weights / 2**30:.2f} GiB")
    print(f"  KV cache, batch 1       {cache / 2**30:.2f} GiB ({min(args.max_length, window)} slots)")



def convert_flags(p):
    add_checkpoint_flag(p, required=True)
    p.add_argument("--output", metavar="DIR", required=True)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-shard-size", default="5GB")


@verb("convert", convert_flags, "rewrite a checkpoint in another dtype and/or shard size (HF layout)")
def convert(args):
    from tf_mistral import TFMistralForCausalLM

    model = load_model(TFMistralForCausalLM, args.checkpoint, args.dtype)
    model.save_pretrained(args.output, max_shard_size=args.max_shard_size, dtype=args.dtype)
    tokenizer_file = os.path.join(args.checkpoint, "tokenizer.model")
    if os.path.exists(tokenizer_file):
        import shutil

        shutil.copy(tokenizer_file, os.path.join(args.output, "tokenizer.model"))
    print(f"wrote {args.output}")



def generate_flags(p):
    add_checkpoint_flag(p)
    p.add_argument("prompt", help="the text to continue (or the user message with --chat)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the Mistral chat format")
    p.add_argument("--dtype", default=None, help="Keras dtype policy (default: the checkpoint's)")
    add_sampling_flags(p)


@verb("generate", generate_flags, "complete a prompt (or answer a chat message), streaming the text")
def generate(args):
    from tf_mistral import TextStreamer, TFMistralForCausalLM

    tokenizer = load_tokenizer(args.checkpoint)
    model = load_model(TFMistralForCausalLM, args.checkpoint, args.dtype)
    if args.chat:
        input_ids = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], return_tensors="np")
    else:
        input_ids = tokenizer([args.prompt], return_tensors="np")["input_ids"]
    streamer = TextStreamer(tokenizer)
    print(args.prompt if not args.chat else "", end="", flush=True)
    model.generate(input_ids, streamer=streamer, **sampling_kwargs(args))
    if streamer.tokens_per_second:
        print(f"[{len(streamer.ids)} tokens, {streamer.tokens_per_second:.1f} tokens/s]", file=sys.stderr)



def chat_flags(p):
    add_checkpoint_flag(p)
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--dtype", default=None)
    add_sampling_flags(p)


@verb("chat", chat_flags, "talk with an instruct model, turn by turn (empty line or Ctrl-D ends)")
def chat(args):
    from tf_mistral import TextStreamer, TFMistralForCausalLM

    tokenizer = load_tokenizer(args.checkpoint)
    model = load_model(TFMistralForCausalLM, args.checkpoint, args.dtype)
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
        input_ids = tokenizer.apply_chat_template(messages, return_tensors="np")
        streamer = TextStreamer(tokenizer)
        print("mistral> ", end="", flush=True)
        output = model.generate(input_ids, streamer=streamer, **sampling_kwargs(args))
        reply = tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)
        messages.append({"role": "assistant", "content": reply})



def classify_flags(p):
    add_checkpoint_flag(p, required=True)
    p.add_argument("texts", nargs="+")
    p.add_argument("--dtype", default=None)


@verb("classify", classify_flags, "label texts with a sequence-classification checkpoint")
def classify(args):
    import numpy as np

    from tf_mistral import TFMistralForSequenceClassification

    tokenizer = load_tokenizer(args.checkpoint)
    model = load_model(TFMistralForSequenceClassification, args.checkpoint, args.dtype)
    batch = tokenizer(args.texts, return_tensors="np", padding=True)
    logits = np.asarray(model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits, np.float32)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for text, row in zip(args.texts, probs):
        label = model.config.id2label[int(row.argmax())]
        print(f"{label}\t{row.max():.3f}\t{text}")



# ----------------------------------------------------------------------------------------------


def build_parser():
    parser = argparse.ArgumentParser(prog="tf-mistral", description="Mistral-7B for TensorFlow / Keras")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (function, flags, help) in VERBS.items():
        child = sub.add_parser(name, help=help, description=help)
        child.add_argument("--debug", action="store_true", help="show tracebacks")
        flags(child)
        child.set_defaults(run=function)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    if not args.debug:
        import_tensorflow_quietly()
    try:
        args.run(args)
    except UsageError as error:
        print(f"tf-mistral {args.verb}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the command line shows every failure as a message
        if args.debug:
            raise
        print(f"tf-mistral {args.verb}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
