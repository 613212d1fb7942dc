"""`tf-mistral chat`: an instruct model answering turn by turn (an empty line or Ctrl-D ends)."""

import argparse
import sys

from tf_mistral import TFMistralForCausalLM, backends
from tf_mistral.cli.loading import load_checkpoint
from tf_mistral.cli.shared import add_checkpoint_flag, add_quantize_flag, add_sampling_flags, sampling_kwargs


def add_flags(p: argparse.ArgumentParser) -> None:
    add_checkpoint_flag(p)
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--dtype", default=None)
    add_quantize_flag(p)
    add_sampling_flags(p)


def run(args: argparse.Namespace) -> None:
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
