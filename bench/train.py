"""Training throughput and peak memory: tf_mistral `fit` beside KerasHub and HF transformers.

    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/train.py

The 175M benchmark model (hidden 1024, 8 layers, 16 heads / 4 kv heads, intermediate 3584,
vocab 32000, sliding window 256), randomly initialised, trained on the same token ids: a text
corpus (this repository's Python sources and docs) tokenized with the Mistral v1 tokenizer and
packed into rows of 256 tokens, batch 4 (1024 tokens a step), float32 weights, AdamW.

Each configuration runs in a fresh process: `--warmup` steps (tracing, compilation) and then
`--steps` timed steps; tokens/s = steps x 1024 / their wall time. Peak RSS is the process's
`ru_maxrss` (from `os.wait4`): weights, optimizer state, gradients, activations and the framework.
Writes the table into docs/fine-tuning.md.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

from doc_section import replace_section

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
DOC = os.path.join(ROOT, "docs", "fine-tuning.md")
COMMAND = "flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/train.py"
MODEL = dict(vocab_size=32000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
             num_attention_heads=16, num_key_value_heads=4, head_dim=64, sliding_window=256,
             max_position_embeddings=4096, rms_norm_eps=1e-5)
SEQUENCE, BATCH, RANK, LEARNING_RATE = 256, 4, 8, 1e-4
RUNS = {  # name: (framework, variant, description)
    "ours_full": ("ours", "full", "tf_mistral `fit`, full fine-tuning"),
    "ours_full_xla": ("ours", "xla", "tf_mistral `fit`, full fine-tuning, `jit_compile=True`"),
    "ours_full_remat": ("ours", "remat", "tf_mistral `fit`, full fine-tuning, `rematerialize(model)`"),
    "ours_lora": ("ours", "lora", f"tf_mistral `fit`, LoRA r={RANK} on q_proj, v_proj"),
    "keras_hub_full": ("keras_hub", "full", "KerasHub `MistralCausalLM.fit`, full fine-tuning"),
    "keras_hub_lora": (
        "keras_hub", "lora", f"KerasHub `MistralCausalLM.fit`, `backbone.enable_lora({RANK})` (query, value)"
    ),
    "hf_full": ("hf", "full", "HF transformers (PyTorch) training loop, full fine-tuning"),
}


# ----------------------------------------------------------------------------------------------
# Data: the same packed token ids for every framework


def make_data(path, rows):
    """[rows, SEQUENCE] int32 token ids from this repository's text, packed with the data helpers."""
    from tf_mistral.tokenizer import MistralTokenizer
    from tf_mistral.training import causal_lm_dataset, read_texts

    files = sorted(glob.glob(os.path.join(ROOT, "tf_mistral", "**", "*.py"), recursive=True)
                   + glob.glob(os.path.join(ROOT, "docs", "*.md")))
    texts = read_texts(files)
    while len(texts) * 2000 < rows * SEQUENCE:  # a small repository: repeat it
        texts = texts * 2
    dataset = causal_lm_dataset(texts, MistralTokenizer.default("v1"), SEQUENCE, BATCH, seed=0)
    ids = np.concatenate([batch["input_ids"].numpy() for batch in dataset.take(-(-rows // BATCH))])[:rows]
    if len(ids) < rows:
        raise RuntimeError(f"the corpus gave {len(ids)} rows of {SEQUENCE} tokens, {rows} needed")
    np.save(path, ids)


# ----------------------------------------------------------------------------------------------
# Children: one configuration each


class StepTimer:
    """Wall time of the steps after the warm-up ones (Keras callback and plain-loop helper)."""

    def __init__(self, warmup):
        self.warmup, self.times, self.started = warmup, [], None

    def begin(self):
        self.started = time.perf_counter()

    def end(self):
        self.times.append(time.perf_counter() - self.started)

    def result(self):
        timed = self.times[self.warmup:]
        return {"step_seconds": timed, "tokens_per_second": len(timed) * SEQUENCE * BATCH / sum(timed)}


def keras_timer(warmup):
    import keras

    timer = StepTimer(warmup)

    class Callback(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            timer.begin()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step to finish
            timer.end()

    return timer, Callback()


def trainable_count(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def run_ours(ids, warmup, variant):
    import keras
    import tensorflow as tf

    from tf_mistral import MistralConfig, TFMistralForCausalLM
    from tf_mistral.training import rematerialize

    model = TFMistralForCausalLM(MistralConfig(**MODEL))
    model.build()
    if variant == "lora":
        model.enable_lora(RANK)
    if variant == "remat":
        rematerialize(model)
    model.compile(optimizer=keras.optimizers.AdamW(LEARNING_RATE), jit_compile=variant == "xla")
    data = tf.data.Dataset.from_tensor_slices({"input_ids": ids}).batch(BATCH, drop_remainder=True)
    timer, callback = keras_timer(warmup)
    history = model.fit(data, epochs=1, callbacks=[callback], verbose=0)
    return {
        **timer.result(), "trainable": trainable_count(model.trainable_weights), "loss": history.history["loss"][-1]
    }


def run_keras_hub(ids, warmup, variant):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import keras_hub
    import tensorflow as tf

    backbone = keras_hub.models.MistralBackbone(
        vocabulary_size=MODEL["vocab_size"], num_layers=MODEL["num_hidden_layers"],
        num_query_heads=MODEL["num_attention_heads"], num_key_value_heads=MODEL["num_key_value_heads"],
        hidden_dim=MODEL["hidden_size"], intermediate_dim=MODEL["intermediate_size"],
        sliding_window=MODEL["sliding_window"], layer_norm_epsilon=MODEL["rms_norm_eps"],
    )
    model = keras_hub.models.MistralCausalLM(backbone=backbone, preprocessor=None)
    if variant == "lora":
        backbone.enable_lora(RANK)
    model.compile(optimizer=keras.optimizers.AdamW(LEARNING_RATE),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), weighted_metrics=[])
    # KerasHub's CausalLM takes the next tokens as y; the last position has none (weight 0).
    targets = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)
    weights = np.ones_like(ids, dtype=np.float32)
    weights[:, -1] = 0
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}
    data = tf.data.Dataset.from_tensor_slices((x, targets, weights)).batch(BATCH, drop_remainder=True)
    timer, callback = keras_timer(warmup)
    history = model.fit(data, epochs=1, callbacks=[callback], verbose=0)
    return {
        **timer.result(), "trainable": trainable_count(model.trainable_weights), "loss": history.history["loss"][-1]
    }


def run_hf(ids, warmup, variant):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.MistralConfig(**MODEL, tie_word_embeddings=False)
    model = transformers.MistralForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    timer = StepTimer(warmup)
    batches = torch.from_numpy(ids.astype(np.int64)).split(BATCH)
    for batch in batches:
        timer.begin()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(loss)
        timer.end()
    return {**timer.result(), "trainable": trainable_count([p for p in model.parameters() if p.requires_grad]),
            "loss": loss}


def child(name, data_path, warmup):
    framework, variant, _ = RUNS[name]
    runner = {"ours": run_ours, "keras_hub": run_keras_hub, "hf": run_hf}[framework]
    print(json.dumps(runner(np.load(data_path), warmup, variant)), flush=True)


# ----------------------------------------------------------------------------------------------
# Parent


def run(*args):
    """Runs `train.py *args` in a fresh process; returns (its JSON line, its peak RSS in bytes)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, env=env)
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"train.py {' '.join(args)} failed")
    lines = [line for line in output.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), usage.ru_maxrss * 1024


def table(rows):
    lines = [
        "| run | trainable parameters | tokens/s | s/step | peak RSS (GB) | loss after the run |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, result, peak in rows:
        step = float(np.median(result["step_seconds"]))
        lines.append(f"| {RUNS[name][2]} | {result['trainable'] / 1e6:.2f}M | **{result['tokens_per_second']:.0f}** "
                     f"| {step:.2f} | {peak / 1e9:.2f} | {result['loss']:.3f} |")
    return "\n".join(lines)


def write_doc(text):
    replace_section(DOC, "<!-- training table begin -->", "<!-- training table end -->", text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (tracing, compilation)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--workdir", default="/tmp/tf_mistral_train_bench")
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    parser.add_argument("--child", nargs=3, metavar=("RUN", "DATA", "WARMUP"), help=argparse.SUPPRESS)
    parser.add_argument("--make-data", nargs=2, metavar=("PATH", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))
    if args.make_data:
        return make_data(args.make_data[0], int(args.make_data[1]))

    os.makedirs(args.workdir, exist_ok=True)
    rows_needed = (args.warmup + args.steps) * BATCH
    data_path = os.path.join(args.workdir, f"ids_{rows_needed}x{SEQUENCE}.npy")
    if not os.path.exists(data_path):
        run("--make-data", data_path, str(rows_needed))
    rows = []
    for name in args.runs:
        result, peak = run("--child", name, data_path, str(args.warmup))
        print(json.dumps({"run": name, "peak_rss": peak, **result}), flush=True)
        rows.append((name, result, peak))
    text = table(rows)
    print(text)
    if not args.no_doc:
        write_doc(text)


if __name__ == "__main__":
    main()
