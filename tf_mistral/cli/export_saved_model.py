"""`tf-mistral export saved-model`: a checkpoint as a TF Serving SavedModel at BASE/NAME/VERSION/
(`tf_mistral.export.saved_model`)."""

import argparse

from tf_mistral import arguments
from tf_mistral.export.saved_model import DEFAULT_MAX_LENGTH, DEFAULT_MAX_NEW_TOKENS, DTYPES, export_saved_model


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", metavar="DIR", required=True, help="Hugging Face checkpoint folder")
    p.add_argument("--output", metavar="BASE/NAME", required=True,
                   help="model folder TF Serving watches (--model_base_path); versions go inside")
    p.add_argument("--version", type=arguments.non_negative_int, help="version number (default: the next free one)")
    p.add_argument("--overwrite", action="store_true", help="replace --version if it exists")
    p.add_argument("--max-length", type=arguments.positive_int, default=DEFAULT_MAX_LENGTH,
                   help=f"most tokens per row, prompt + reply (default {DEFAULT_MAX_LENGTH})")
    p.add_argument("--max-new-tokens", type=arguments.positive_int,
                   help="most new tokens per request; serving_default makes up to this many (default "
                        f"{DEFAULT_MAX_NEW_TOKENS}, or half of a --max-length not above it)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--xla", action="store_true",
                   help="XLA-compile generation (TF Serving then needs --xla_cpu_compilation_enabled=true)")
    p.add_argument("--tokenizer", metavar="PATH",
                   help="tokenizer.model (default: the checkpoint's, else Mistral v0.1's)")


def default_max_new_tokens(max_length: int) -> int:
    """`--max-new-tokens` when not given: DEFAULT_MAX_NEW_TOKENS if it fits below `max_length`, else
    half of `max_length` (the other half for the prompt)."""
    return DEFAULT_MAX_NEW_TOKENS if DEFAULT_MAX_NEW_TOKENS < max_length else max(max_length // 2, 1)


def run(args: argparse.Namespace) -> None:
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
