"""`tf-mistral classify`: texts labelled by a sequence-classification checkpoint, one line each
(label, probability, text)."""

import argparse

import numpy as np

from tf_mistral import TFMistralForSequenceClassification
from tf_mistral.cli.loading import load_checkpoint
from tf_mistral.cli.shared import add_checkpoint_flag


def add_flags(p: argparse.ArgumentParser) -> None:
    add_checkpoint_flag(p, required=True)
    p.add_argument("texts", nargs="+")
    p.add_argument("--dtype", default=None)


def run(args: argparse.Namespace) -> None:
    tokenizer, model = load_checkpoint(TFMistralForSequenceClassification, args.checkpoint, args.dtype)
    batch = tokenizer(args.texts, return_tensors="np", padding=True)
    logits = np.asarray(model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits, np.float32)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for text, row in zip(args.texts, probs):
        label = model.config.id2label[int(row.argmax())]
        print(f"{label}\t{row.max():.3f}\t{text}")
