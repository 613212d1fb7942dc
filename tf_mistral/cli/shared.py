"""What several verbs share and the command itself needs without TensorFlow: the usage error,
sizes as text, and the checkpoint, sampling and quantize flags."""

import argparse

from tf_mistral import arguments


class UsageError(Exception):
    """A command line that cannot work (exit code 2)."""


def human_size(count: float) -> str:
    """Bytes as text in binary units: "512 B", "37.5 MiB", "13.49 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            break
        count /= 1024
    if unit == "B":
        return f"{int(count)} B"
    return f"{count:.2f} {unit}" if count < 100 else f"{count:.1f} {unit}"


def add_checkpoint_flag(parser: argparse.ArgumentParser, required: bool = False, help: str | None = None) -> None:
    parser.add_argument(
        "--checkpoint", metavar="DIR", required=required,
        help=help or "Hugging Face checkpoint folder (config.json, safetensors, tokenizer.model)",
    )


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=arguments.positive_int, default=64,
                        help="new tokens per reply (default 64)")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=arguments.positive_float, default=1.0)
    parser.add_argument("--top-k", type=arguments.non_negative_int, default=0,
                        help="0 (or the vocabulary size or more): no top-k filter")
    parser.add_argument("--top-p", type=arguments.probability, default=1.0, help="in (0, 1]; 1: no top-p filter")
    parser.add_argument("--seed", type=arguments.seed, default=0)


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The `add_sampling_flags` values as keyword arguments of every runtime's generate."""
    return dict(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )


def add_quantize_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantize", choices=["none", "int8"], default="none",
        help="int8: Keras int8 weights, quantized while the checkpoint loads (about half the memory of "
             "bfloat16; the model Keras' quantize('int8') gives). It saves memory, not time: TensorFlow decodes "
             "it at bfloat16's speed or slower on CPU, far below LiteRT (docs/scale.md). For int8 speed, export "
             "LiteRT (tf-mistral export tflite --quantize int8) and run it with --tflite. Default none",
    )
