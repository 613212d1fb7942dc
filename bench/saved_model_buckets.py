"""The SavedModel's per-request cache buckets: decode speed of the default export (no XLA, the CLI's
`--max-length 4096`) for short and long requests, beside Keras `generate` on the same checkpoint.

    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/saved_model_buckets.py \\
        --checkpoint /tmp/tf_mistral_scale/checkpoint_8 --output /tmp/s3_sm_buckets [--long-batch 8]
    ... saved_model_buckets.py --checkpoint /tmp/tf_mistral_scale/checkpoint_8 --child cache-shapes   # one step

Each step runs in a fresh process (its peak RSS is its own), one after another:
- export: `export_saved_model(checkpoint, output)` with the defaults (bf16, max_length 4096, no
  XLA): its time and peak RSS;
- keras, saved-model: the makers of bench/runtimes.py (greedy, end tokens ignored), timed per
  request shape as bench/scale.py `measure` does: a first 1-token call (tracing; for Keras also
  compiling), a timed 1-token call t1, a timed call of 1 + n tokens tn; decode tokens/s =
  batch * n / (tn - t1). Shapes: a 32-token prompt + 16 new tokens at batch 1 and 8, and a
  1000-token request (968-token prompt + 32 new) at batch 1 (and at `--long-batch` sizes: each
  of its three calls prefills batch x 968 tokens);
- cache shapes: per request shape, a prefill and its decode loop traced without XLA, once with a
  static cache length (what each branch of a `tf.switch_case` over buckets would run) and once
  with the dynamic length the SavedModel uses, each decode timed over n steps after a warm-up;
  for the short prompts also with the 4096 slots every request had before the buckets.
The SavedModel is deleted at the end. Prints a JSON line per step and a markdown table.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

import runtimes

SHORT, LONG = (32, 16), (968, 32)  # (prompt tokens, new tokens)


def shapes(long_batches):
    return [(1, *SHORT), (8, *SHORT), (1, *LONG)] + [(batch, *LONG) for batch in long_batches]


def prompt(batch, length):
    return np.random.default_rng(1).integers(3, 32000, (batch, length)).astype(np.int32)


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def export_step(checkpoint, output):
    from tf_mistral.export.saved_model import export_saved_model

    started = time.perf_counter()
    result = export_saved_model(checkpoint, output, version=1, progress=False)
    return dict(step="export", seconds=time.perf_counter() - started, peak_rss_gb=peak_rss_gb(),
                cache_length=result["cache_length"], stages=[(s, round(t, 1)) for s, t, _ in result["stages"]])


def generate_step(path, target, long_batches):
    started = time.perf_counter()
    generate = runtimes.keras(target, "bfloat16") if path == "keras" else runtimes.saved_model(target)
    figures = dict(step=path, load_seconds=time.perf_counter() - started, runs=[])

    def timed(ids, new_tokens):
        started = time.perf_counter()
        out = generate(ids, new_tokens)
        return time.perf_counter() - started, out[:, ids.shape[1]:]

    for batch, length, new in shapes(long_batches):
        ids = prompt(batch, length)
        first, _ = timed(ids, 1)
        one, _ = timed(ids, 1)
        many, tokens = timed(ids, 1 + new)
        figures["runs"].append(dict(batch=batch, prompt=length, new=new, first_call_extra_seconds=first - one,
                                    first_token_seconds=one, decode_tokens_per_second=batch * new / (many - one),
                                    tokens=tokens[0].tolist()))
    figures["peak_rss_gb"] = peak_rss_gb()
    return figures


def cache_shapes_step(checkpoint, long_batches):
    """Decode speed of the loop traced with a static vs a dynamic cache length (no XLA)."""
    import tensorflow as tf

    import tf_mistral
    from tf_mistral import cache as kv_cache
    from tf_mistral.generation import buckets, loop
    from tf_mistral.generation.sampling import SamplingMode

    model = tf_mistral.TFMistralForCausalLM.from_pretrained(checkpoint, dtype="bfloat16", progress=False)
    sampling = loop.Sampling(SamplingMode(), eos_token_ids=(), pad_token_id=0)
    runs = []
    for batch, length, new in shapes(long_batches):
        ids = tf.constant(prompt(batch, length))
        slots = buckets.cache_length(length + new, model.config.sliding_window, 4096)
        run = dict(batch=batch, prompt=length, new=new, cache_length=slots)
        variants = [("static", slots, False), ("dynamic", slots, True)]
        if length == SHORT[0]:
            variants.append(("before", 4096, False))  # every request had the export's longest cache
        states = {}  # cache length -> the state after the prefill
        for name, length_of_cache, dynamic in variants:
            writes = kv_cache.SCATTER_WRITES  # as the default (no-XLA) SavedModel traces it
            if length_of_cache not in states:
                start = tf.function(lambda ids: loop.start(model, ids, tf.ones_like(ids), 1 + 2 * new,
                                                           length_of_cache, 0, cache_writes=writes))
                states[length_of_cache] = start(ids)
            state = states[length_of_cache]
            signature = _dynamic(state) if dynamic else None
            decode = tf.function(lambda state, n: loop.decode(model, state, n, sampling, writes),
                                 input_signature=signature)
            decode(state, tf.constant(2))  # warm-up: trace and the first run
            started = time.perf_counter()
            decode(state, tf.constant(1 + new))
            run[f"{name}_decode_tokens_per_second"] = batch * new / (time.perf_counter() - started)
        runs.append(run)
    return dict(step="cache-shapes", runs=runs, peak_rss_gb=peak_rss_gb())


def _dynamic(state):
    """An input signature for `(state, n)` where the cache's batch and slot axes are dynamic."""
    import tensorflow as tf

    def spec(value):
        value = tf.convert_to_tensor(value)
        shape = [None] * value.shape.rank if value.shape.rank else []
        return tf.TensorSpec(shape, value.dtype)

    specs = {key: spec(value) for key, value in state.items() if key != "cache"}
    specs["cache"] = [tuple(tf.TensorSpec([None, k.shape[1], None, k.shape[3]] if i == 0 else
                                          [None, k.shape[1], k.shape[2], None], k.dtype)
                            for i, k in enumerate(pair)) for pair in state["cache"]]
    return [specs, tf.TensorSpec([], tf.int32)]


def in_child(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env, check=True)
    line = done.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    return json.loads(line)


def table(export, keras, served, shapes_run):
    lines = [f"Export (bf16, `--max-length 4096`, no XLA): {export['seconds']:.0f} s, peak RSS "
             f"{export['peak_rss_gb']:.2f} GB. Load: Keras {keras['load_seconds']:.0f} s, SavedModel "
             f"{served['load_seconds']:.0f} s.", "",
             "| batch | prompt + new | Keras decode tok/s | SavedModel decode tok/s | SavedModel / Keras "
             "| greedy equal | loop decode tok/s: static / dynamic cache (slots); 4096 slots |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for k, s, c in zip(keras["runs"], served["runs"], shapes_run["runs"]):
        before = c.get("before_decode_tokens_per_second")
        lines.append(
            f"| {k['batch']} | {k['prompt']} + {k['new']} | {k['decode_tokens_per_second']:.2f} "
            f"| {s['decode_tokens_per_second']:.2f} "
            f"| {s['decode_tokens_per_second'] / k['decode_tokens_per_second']:.2f}x "
            f"| {'yes' if k['tokens'] == s['tokens'] else 'no'} | {c['static_decode_tokens_per_second']:.2f} / "
            f"{c['dynamic_decode_tokens_per_second']:.2f} ({c['cache_length']}); "
            f"{'-' if before is None else f'{before:.2f}'} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="/tmp/tf_mistral_scale/checkpoint_8")
    parser.add_argument("--output", default="/tmp/s3_sm_buckets")
    parser.add_argument("--long-batch", type=int, nargs="*", default=[], help="more batch sizes for the long request")
    parser.add_argument("--child", nargs="+", metavar="STEP",
                        help="run one step in this process: export, keras CHECKPOINT, saved-model VERSION_DIR, "
                             "cache-shapes")
    args = parser.parse_args()
    if args.child:
        step, *rest = args.child
        long_batches = [int(b) for b in args.long_batch]
        if step == "export":
            result = export_step(args.checkpoint, args.output)
        elif step == "cache-shapes":
            result = cache_shapes_step(args.checkpoint, long_batches)
        else:
            result = generate_step(step, rest[0], long_batches)
        print(json.dumps(result))
        return
    common = ["--checkpoint", args.checkpoint, "--output", args.output, "--long-batch", *map(str, args.long_batch)]
    if os.path.exists(args.output):
        raise SystemExit(f"{args.output} exists: remove it first (this benchmark deletes it when done)")
    try:
        export = in_child(*common, "--child", "export")
        keras = in_child(*common, "--child", "keras", args.checkpoint)
        served = in_child(*common, "--child", "saved-model", os.path.join(args.output, "1"))
    finally:
        shutil.rmtree(args.output, ignore_errors=True)
    shapes_run = in_child(*common, "--child", "cache-shapes")
    print(table(export, keras, served, shapes_run))


if __name__ == "__main__":
    main()
