"""`tf-mistral demo`, the main job (`tf_mistral.demo.run_demo`)."""

import argparse

from tf_mistral import arguments
from tf_mistral.cli.shared import add_checkpoint_flag
from tf_mistral.demo import DEFAULT_NEW_TOKENS, DEFAULT_OUTPUT, DEFAULT_STEPS, run_demo


def add_flags(p: argparse.ArgumentParser) -> None:
    add_checkpoint_flag(p, help="run on these real weights instead of building a small model")
    p.add_argument("--output", metavar="DIR", default=DEFAULT_OUTPUT, help=f"where files go (default {DEFAULT_OUTPUT})")
    p.add_argument("--steps", type=arguments.non_negative_int,
                   help=f"fine-tuning steps (default {DEFAULT_STEPS} for the small model, "
                        "0 with --checkpoint; there LoRA is used)")
    p.add_argument("--learning-rate", type=arguments.positive_float, help="default 3e-3 (small model) or 1e-3 (LoRA)")
    p.add_argument("--text", metavar="FILE",
                   help="training text (default: the opening of Alice's Adventures in Wonderland)")
    p.add_argument("--prompt", help="prompt for every runtime (default: the text's first words)")
    p.add_argument("--max-new-tokens", type=arguments.positive_int, default=DEFAULT_NEW_TOKENS,
                   help=f"tokens each runtime generates (default {DEFAULT_NEW_TOKENS})")
    p.add_argument("--quantize", default="int8", choices=["none", "fp16", "int8", "int4"],
                   help="TFLite variant to export and run (default int8)")
    p.add_argument("--dtype",
                   help="Keras dtype for --checkpoint (default: the checkpoint's); the small model is float32")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    run_demo(
        output=args.output, checkpoint=args.checkpoint, steps=args.steps, learning_rate=args.learning_rate,
        text_file=args.text, prompt=args.prompt, max_new_tokens=args.max_new_tokens, quantize=args.quantize,
        dtype=args.dtype, seed=args.seed,
    )
