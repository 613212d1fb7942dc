"""Quality you can see: held-out perplexity of a small Mistral trained here on public-domain books,
in Keras float32 and in its TFLite exports (float32, fp16, int8, int4).

    nice -n 19 .venv/bin/python bench/quality.py

1. Text: tf_mistral/data/ (Alice's Adventures in Wonderland, Botchan, Paradise Lost; see
   its README). Each book's last paragraphs are held out (6-10% of its characters: `split_book`).
   Each paragraph is one example of `training.causal_lm_dataset` (the default Mistral v0.1
   tokenizer, `<s> paragraph </s>`, packed into rows of 256 tokens); the held-out paragraphs are
   packed into rows the same way, in order.
2. Model: the demo's shape (`tf_mistral.demo.SMALL_MODEL`: hidden 256, 4 layers, 8 heads / 2 kv
   heads, intermediate 768, sliding window 64, vocab 32000; 19.4M parameters) trained from scratch
   with Keras `fit`: AdamW, a linear warm-up then cosine decay, `--steps` batches of 8 rows. The
   held-out loss is logged every 50 steps, never used to choose weights. The checkpoint
   (`save_pretrained`) and its training log are saved in `--workdir` at each log (an interrupted
   run leaves the latest) and later runs reuse them (delete the folder to train again).
3. Exports: `export_tflite` of that checkpoint for each `--variants` entry (`VARIANTS`: the four
   `--quantize` options, int4 in each block size, and int4 recipes that keep `lm_head`, or it and
   the embedding, in int8),
   256 cache slots (64 under the window).
4. Perplexity over every held-out row: Keras float32 from one forward pass a row; each .tflite file
   through `TFLiteRunner.decode`, token by token from position 0 with an empty cache a row (the
   prefill signatures return no logits). exp(mean negative log-likelihood) of the tokens that the
   training loss counts (every token but a paragraph's `<s>`), the same tokens for every variant.
No timing is measured, so the run does not take the benchmark lock; `nice` lets others'
benchmarks go first. Writes the table into docs/tflite.md (section "Quality").
"""

import argparse
import gzip
import importlib.resources
import json
import os
import pathlib
import sys
import time

import numpy as np

from doc_section import replace_section

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "tflite.md"
START, END = "<!-- quality:start -->", "<!-- quality:end -->"
COMMAND = "nice -n 19 .venv/bin/python bench/quality.py"
BOOKS = {"alice_in_wonderland.txt.gz": "Alice", "botchan.txt.gz": "Botchan", "paradise_lost.txt.gz": "Paradise Lost"}
HELD_OUT = 0.10
SEQUENCE, BATCH = 256, 8
STEPS, WARMUP, LEARNING_RATE, WEIGHT_DECAY = 300, 30, 2e-3, 0.1
LOG_EVERY = 50
CACHE_LENGTH = 256
VARIANTS = {  # --variants name: (quantize, int8_weights, int4 block size, the table's label)
    "none": ("none", (), None, "float32"),
    "fp16": ("fp16", (), None, "fp16 weights"),
    "int8": ("int8", (), None, "int8 (per-row scales)"),
    "int4-b32": ("int4", (), 32, "int4, blocks of 32"),
    "int4-b64": ("int4", (), 64, "int4, blocks of 64"),
    "int4": ("int4", (), 128, "int4, blocks of 128 (the default)"),
    "int4-b256": ("int4", (), 256, "int4, blocks of 256"),
    "int4-head8": ("int4", ("lm_head",), 128, "int4 (128), `lm_head` int8"),
    "int4-ends8": ("int4", ("embed_tokens", "lm_head"), 128, "int4 (128), embedding and `lm_head` int8"),
}


# ----------------------------------------------------------------------------------------------
# Text


def read_book(name):
    """The text of one bundled book (tf_mistral/data/`name`)."""
    data = importlib.resources.files("tf_mistral") / "data" / name
    return gzip.decompress(data.read_bytes()).decode("utf-8")


def split_book(text, held_out=HELD_OUT):
    """`(training paragraphs, held-out paragraphs)`: the held-out part starts at the first paragraph
    that starts `1 - held_out` of the way to the last paragraph's start or later (a long last
    paragraph makes it shorter than `held_out` of the book: Paradise Lost holds out 6%)."""
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    starts = np.cumsum([0] + [len(p) for p in paragraphs[:-1]])
    first = int(np.searchsorted(starts, starts[-1] * (1 - held_out)))
    return paragraphs[:first], paragraphs[first:]


def corpus():
    """`(training paragraphs, held-out paragraphs, {book: (training chars, held-out chars)})`."""
    train, held, sizes = [], [], {}
    for name, title in BOOKS.items():
        book_train, book_held = split_book(read_book(name))
        train += book_train
        held += book_held
        sizes[title] = (sum(map(len, book_train)), sum(map(len, book_held)))
    return train, held, sizes


def held_out_rows(paragraphs, tokenizer):
    """`(input_ids, labels)`, int32 `[rows, SEQUENCE]` each: the held-out paragraphs packed in order
    (the last partial row dropped); labels are -100 on each paragraph's `<s>`."""
    from tf_mistral.training import causal_lm_dataset

    rows = causal_lm_dataset(paragraphs, tokenizer, SEQUENCE, batch_size=1, shuffle=False)
    batches = list(rows.as_numpy_iterator())
    return (np.concatenate([b["input_ids"] for b in batches]), np.concatenate([b["labels"] for b in batches]))


# ----------------------------------------------------------------------------------------------
# Training (once; the checkpoint is reused)


def train(folder, steps, train_paragraphs, held_ids, held_labels, tokenizer):
    """Trains the demo-shaped model for `steps` batches, saving it (and `training.json`) in
    `folder` after every `LOG_EVERY` steps; returns the training log."""
    import keras

    from tf_mistral.demo import build_small_model
    from tf_mistral.training import causal_lm_dataset

    model = build_small_model()
    warmup = min(WARMUP, steps // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps - warmup, alpha=0.1, warmup_target=LEARNING_RATE, warmup_steps=warmup)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=WEIGHT_DECAY), jit_compile=False)
    data = causal_lm_dataset(train_paragraphs, tokenizer, SEQUENCE, BATCH, seed=0).repeat()
    log = dict(steps=0, planned_steps=steps, seconds=0.0, batch=BATCH, sequence=SEQUENCE,
               learning_rate=LEARNING_RATE, parameters=model.count_params(), history={})
    started = time.perf_counter()

    def save(epoch, logs):
        model.save_pretrained(folder, progress=False)
        log.update(steps=min(steps, (epoch + 1) * LOG_EVERY), seconds=time.perf_counter() - started)
        for name, value in logs.items():
            log["history"].setdefault(name, []).append(float(value))
        with open(os.path.join(folder, "training.json"), "w") as f:
            json.dump(log, f, indent=1)
        print(f"step {log['steps']}: held-out perplexity {np.exp(logs['val_loss']):.1f}, "
              f"{log['seconds'] / 60:.1f} min", flush=True)

    model.fit(data, steps_per_epoch=min(steps, LOG_EVERY), epochs=-(-steps // LOG_EVERY),
              validation_data={"input_ids": held_ids, "labels": held_labels}, validation_batch_size=BATCH,
              verbose=2, callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=save)])
    return log


# ----------------------------------------------------------------------------------------------
# Perplexity


def log_likelihoods(logits, targets):
    """float64 `[n]`: log p(target) under each row of `logits [n, vocab]`."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
    return logits[np.arange(len(targets)), targets] - log_norm


def scored(labels):
    """bool `[rows, SEQUENCE - 1]`: which next-token predictions count (label not -100)."""
    return labels[:, 1:] != -100


def keras_perplexity(folder, ids, labels):
    from tf_mistral import TFMistralForCausalLM

    model = TFMistralForCausalLM.from_pretrained(folder, dtype="float32", progress=False)
    total, count = 0.0, 0
    for row_ids, row_labels in zip(ids, labels):
        logits = model(row_ids[None]).logits.numpy()[0, :-1]
        keep = scored(row_labels[None])[0]
        total += log_likelihoods(logits[keep], row_labels[1:][keep]).sum()
        count += int(keep.sum())
    return float(np.exp(-total / count)), count


def tflite_perplexity(path, ids, labels):
    from tf_mistral.silence import silenced_stderr
    from tf_mistral.tflite_runner import TFLiteRunner

    with silenced_stderr():  # LiteRT's start-up lines
        runner = TFLiteRunner(path, num_threads=2)
    total, count = 0.0, 0
    for row_ids, row_labels in zip(ids, labels):
        cache, logits = runner.empty_cache(), []
        for position, token in enumerate(row_ids[:-1]):
            step_logits, cache = runner.decode(int(token), cache, position)
            logits.append(step_logits)
        keep = scored(row_labels[None])[0]
        total += log_likelihoods(np.stack(logits)[keep], row_labels[1:][keep]).sum()
        count += int(keep.sum())
    return float(np.exp(-total / count)), count


# ----------------------------------------------------------------------------------------------
# Report


def report(log, sizes, held_ids, keras_ppl, results, tokens, command):
    base = results["none"]["perplexity"] if "none" in results else keras_ppl
    steps = log["steps"]
    stopped = f" (stopped early: {log['planned_steps']} planned)" if steps < log["planned_steps"] else ""
    history = log["history"]
    curve = ", ".join(
        f"{min(steps, (i + 1) * LOG_EVERY)}: {np.exp(loss):.1f}" for i, loss in enumerate(history["val_loss"])
    )
    books = ", ".join(f"{title} {train / 1000:.0f} k / {held / 1000:.0f} k" for title, (train, held) in sizes.items())
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')}. Command (trains once, ~{log['seconds'] / 60:.0f} min here, then "
        "reuses the checkpoint in its work folder):",
        "",
        f"    {command}",
        "",
        f"Model: the demo's shape (hidden 256, 4 layers, 8 heads / 2 kv heads, intermediate 768, window 64, "
        f"vocab 32000; {log['parameters'] / 1e6:.1f}M parameters), trained from scratch with Keras `fit` on "
        f"the bundled public-domain books (tf_mistral/data; characters trained / held out: {books}): "
        f"{steps} steps{stopped} of {log['batch']} x {log['sequence']} tokens "
        f"({steps * log['batch'] * log['sequence'] / 1e6:.2f}M tokens), AdamW, peak learning rate "
        f"{log['learning_rate']:g}, in {log['seconds'] / 60:.1f} min on 2 shared cores. Held-out perplexity "
        f"(Keras) by step: {curve}.",
        f"Perplexity over the same {tokens:,} held-out tokens ({len(held_ids)} rows of {SEQUENCE}) for every "
        "variant; each .tflite file runs `decode` token by token (256 cache slots, 64 under the window).",
        "",
        "| variant | file MiB | held-out perplexity | vs float32 file |",
        "| --- | --- | --- | --- |",
        f"| Keras float32 | - | {keras_ppl:.3f} | {100 * (keras_ppl / base - 1):+.2f}% |",
    ]
    for variant, result in results.items():
        lines.append(f"| {VARIANTS[variant][3]} | {result['bytes'] / 2**20:.1f} | {result['perplexity']:.3f} | "
                     f"{100 * (result['perplexity'] / base - 1):+.2f}% |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/tf_mistral_quality")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps (only when no checkpoint exists)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)}")
    parser.add_argument("--rows", type=int, default=None, help="score only the first N held-out rows (a quick check)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from tf_mistral.export.tflite import export_tflite
    from tf_mistral.tokenizer import MistralTokenizer

    keras.utils.set_random_seed(0)  # before the tokenizer: seeding clears TF's kernel cache, its op too
    tokenizer = MistralTokenizer.default()
    train_paragraphs, held_paragraphs, sizes = corpus()
    held_ids, held_labels = held_out_rows(held_paragraphs, tokenizer)
    folder = os.path.join(args.workdir, "checkpoint")
    if os.path.isfile(os.path.join(folder, "training.json")):
        with open(os.path.join(folder, "training.json")) as f:
            log = json.load(f)
        print(f"reusing {folder} ({log['steps']} of {log['planned_steps']} steps)", flush=True)
    else:
        log = train(folder, args.steps, train_paragraphs, held_ids, held_labels, tokenizer)

    held_ids, held_labels = held_ids[:args.rows], held_labels[:args.rows]
    keras_ppl, tokens = keras_perplexity(folder, held_ids, held_labels)
    print(f"Keras float32: perplexity {keras_ppl:.3f} over {tokens} tokens", flush=True)
    results = {}
    for variant in args.variants.split(","):
        quantize, int8_weights, block_size, _ = VARIANTS[variant]
        path = os.path.join(args.workdir, f"model_{variant}.tflite")
        export = export_tflite(folder, path, quantize=quantize, int8_weights=int8_weights, cache_length=CACHE_LENGTH,
                               int4_block_size=block_size, progress=False)
        perplexity, _ = tflite_perplexity(path, held_ids, held_labels)
        results[variant] = dict(bytes=export["bytes"], perplexity=perplexity)
        print(f"{variant}: {export['bytes'] / 2**20:.1f} MiB, perplexity {perplexity:.3f}", flush=True)
    command = COMMAND + "".join(f" {arg}" for arg in sys.argv[1:])
    text = report(log, sizes, held_ids, keras_ppl, results, tokens, command)
    replace_section(DOC, START, END, text, heading="\n## Quality\n\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
