"""`tf-mistral info`: a checkpoint's or preset's config, parameter count and memory needs (no
TensorFlow)."""

import argparse

from tf_mistral import arguments
from tf_mistral.cli.shared import UsageError, add_checkpoint_flag, human_size
from tf_mistral.config import PRESETS, MistralConfig

BYTES_PER_PARAMETER = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int4": 0.5}
SHOWN_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window", "rope_theta",
    "rms_norm_eps", "torch_dtype",
)


def add_flags(p: argparse.ArgumentParser) -> None:
    add_checkpoint_flag(p)
    p.add_argument("--preset", help="e.g. mistral_7b_v0.1, mistral_7b_instruct_v0.2, mistral_7b_v0.3")
    p.add_argument("--dtype", default="bfloat16", choices=list(BYTES_PER_PARAMETER))
    p.add_argument("--max-length", type=arguments.positive_int, default=4096,
                   help="tokens of context for the cache estimate")


def run(args: argparse.Namespace) -> None:
    if bool(args.checkpoint) == bool(args.preset):
        raise UsageError("give exactly one of --checkpoint DIR or --preset NAME")
    if args.preset and args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; presets: {', '.join(sorted(PRESETS))}")
    config = (
        MistralConfig.from_json_file(args.checkpoint) if args.checkpoint else MistralConfig.from_preset(args.preset)
    )
    params = config.num_parameters()
    print(f"{'field':<26}value")
    for field in SHOWN_FIELDS:
        print(f"{field:<26}{getattr(config, field)}")
    print(f"{'parameters':<26}{params:,} ({params / 1e9:.2f} B)" if params >= 1e9 else
          f"{'parameters':<26}{params:,} ({params / 1e6:.1f} M)")
    window = config.sliding_window or config.max_position_embeddings
    slots = min(args.max_length, window)
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    cache_bytes = 2 if args.dtype != "float32" else 4
    print(f"\nmemory for dtype {args.dtype}:")
    print(f"  weights                 {human_size(params * BYTES_PER_PARAMETER[args.dtype])}")
    print(f"  KV cache, batch 1       {human_size(kv_per_token * slots * cache_bytes)} ({slots} slots)")
