"""`tf-mistral export tflite`: a causal LM checkpoint as one .tflite file with prefill_N / decode
signatures over an external KV cache (`tf_mistral.export.tflite`), and optionally a .litertlm."""

import argparse

from tf_mistral import arguments
from tf_mistral.cli.shared import human_size
from tf_mistral.export.tflite import export_tflite
from tf_mistral.export.tflite_options import (
    DEFAULT_INT4_BLOCK_SIZE,
    DEFAULT_PREFILL_LENGTHS,
    INT4_BLOCK_SIZES,
    QUANTIZE_OPTIONS,
)


def add_flags(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> None:
    result = export_tflite(
        args.checkpoint, args.output, quantize=args.quantize, prefill_lengths=args.prefill_lengths,
        cache_length=args.cache_length, litertlm=args.litertlm, tokenizer=args.tokenizer,
        int8_weights=args.int8_weights, int4_block_size=args.int4_block_size,
    )
    print(f"wrote {result['path']} ({human_size(result['bytes'])}, {result['cache_length']} cache slots, "
          f"signatures {', '.join(f'prefill_{n}' for n in result['prefill_lengths'])}, decode)")
    if result["litertlm"]:
        print(f"wrote {result['litertlm']}")
