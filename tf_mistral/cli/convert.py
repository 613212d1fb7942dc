"""`tf-mistral convert`: a checkpoint rewritten in another dtype and/or shard size (HF layout)."""

import argparse
import os
import shutil

from tf_mistral import TFMistralForCausalLM, arguments
from tf_mistral.cli.shared import add_checkpoint_flag


def add_flags(p: argparse.ArgumentParser) -> None:
    add_checkpoint_flag(p, required=True)
    p.add_argument("--output", metavar="DIR", required=True)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-shard-size", default="5GB", type=arguments.shard_size, help="largest shard (default 5GB)")


def run(args: argparse.Namespace) -> None:
    model = TFMistralForCausalLM.from_pretrained(args.checkpoint, dtype=args.dtype)
    # The whole model is in memory before the save starts, and a save switches from the old
    # files to the new ones in one step: --output may be the --checkpoint folder itself.
    model.save_pretrained(args.output, max_shard_size=args.max_shard_size, dtype=args.dtype)
    source = os.path.join(args.checkpoint, "tokenizer.model")
    target = os.path.join(args.output, "tokenizer.model")
    if os.path.exists(source) and not (os.path.exists(target) and os.path.samefile(source, target)):
        shutil.copy(source, target)
    print(f"wrote {args.output}")
