"""Mistral-7B's exact shape on this machine: a random checkpoint, the LiteRT export's memory and
time per variant, and the exported files' speed and memory at run time.

    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/scale.py checkpoint          # 14.5 GB, a few minutes
    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/scale.py export int8 int4 fp16
    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/scale.py run int8 int4

`--layers N` makes the same shape with N decoder layers (8 layers: 2.1B parameters), to iterate
before the 7B run. The checkpoint (`--workdir`, default /tmp/tf_mistral_scale) is kept out of
git; its tensors are N(0, 0.02) in bfloat16, norms 1, written one tensor at a time. Each export
and each run happens in a fresh process, so its peak RSS (`ru_maxrss`) is its own; results are
appended to `results.jsonl` in the workdir and the table in docs/scale.md is rewritten from them.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import ml_dtypes
import numpy as np

from doc_section import replace_section

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scale.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
PREFILL_LENGTHS = (32, 128, 512)
CACHE_LENGTH = 1024


def config_for(layers):
    from tf_mistral.config import MistralConfig

    config = MistralConfig.from_preset("mistral_7b_v0.1")
    if layers:
        config = dataclasses.replace(config, num_hidden_layers=layers)
    return dataclasses.replace(config, torch_dtype="bfloat16")


def make_checkpoint(folder, layers):
    """Writes the random bf16 checkpoint (3 shards of at most 5 GB at 7B), one tensor at a time."""
    from tf_mistral.export.tflite_weights import norm_names, weight_plan
    from tf_mistral.safetensors_io import TensorEntry, write_checkpoint

    config = config_for(layers)
    rng = np.random.default_rng(0)

    def random(shape):
        return lambda: (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)

    entries = [TensorEntry(w.name, ml_dtypes.bfloat16, w.shape, random(w.shape)) for w in weight_plan(config)]
    entries += [TensorEntry(name, ml_dtypes.bfloat16, (config.hidden_size,),
                            lambda: np.ones(config.hidden_size, ml_dtypes.bfloat16)) for name in norm_names(config)]
    started = time.perf_counter()
    total = write_checkpoint(folder, entries, max_shard_size="5GB")
    config.save(folder)
    print(f"{folder}: {total / 1e9:.2f} GB in {time.perf_counter() - started:.0f} s")


def export_child(checkpoint, output, quantize):
    """One export; prints a JSON line with its time, size and peak RSS."""
    from tf_mistral.export.tflite import export_tflite

    started = time.perf_counter()
    result = export_tflite(checkpoint, output, quantize=quantize, prefill_lengths=PREFILL_LENGTHS,
                           cache_length=CACHE_LENGTH)
    print(json.dumps(dict(kind="export", quantize=quantize, seconds=time.perf_counter() - started,
                          bytes=result["bytes"], peak_rss_gb=_peak_rss_gb(),
                          stages=[(s, round(t, 1), round(r, 2)) for s, t, r in result["stages"]])))


def run_child(path, quantize, threads):
    """Prefill (32 and 512 tokens: time to first token) and 16 decode steps with TFLiteRunner."""
    from tf_mistral.export.tflite_runner import TFLiteRunner

    started = time.perf_counter()
    runner = TFLiteRunner(path, num_threads=threads)
    load = time.perf_counter() - started
    rng = np.random.default_rng(1)
    figures = dict(kind="run", runner="CompiledModel", quantize=quantize, threads=threads, load_seconds=load,
                   file_bytes=os.path.getsize(path))
    for length in (32, 512):
        prompt = rng.integers(3, 32000, length).astype(np.int32)
        started = time.perf_counter()
        cache = runner.prefill(prompt[:-1], runner.empty_cache(), 0)
        logits, cache = runner.decode(int(prompt[-1]), cache, length - 1)
        figures[f"first_token_{length}_seconds"] = time.perf_counter() - started
        figures[f"prefill_{length}_tokens_per_second"] = length / figures[f"first_token_{length}_seconds"]
    token, position, steps = int(np.argmax(logits)), 512, 16
    started = time.perf_counter()
    for _ in range(steps):
        logits, cache = runner.decode(token, cache, position)
        token, position = int(np.argmax(logits)), position + 1
    figures["decode_tokens_per_second"] = steps / (time.perf_counter() - started)
    figures["peak_rss_gb"] = _peak_rss_gb()
    figures["kv_cache_gb"] = sum(v.nbytes for v in cache.values()) / 1e9
    print(json.dumps(figures))


def _peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def in_child(*args):
    """Runs this script's `args` in a fresh process; returns its last stdout line as a dict."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_doc(results_path):
    rows = [json.loads(line) for line in open(results_path)]
    exports = [r for r in rows if r["kind"] == "export"]
    runs = [r for r in rows if r["kind"] == "run"]
    lines = ["| export | file GB | time | peak RSS GB | date |", "| --- | --- | --- | --- | --- |"]
    for r in exports:
        lines.append(f"| {r['quantize']} ({r['shape']}) | {r['bytes'] / 1e9:.2f} | {r['seconds'] / 60:.1f} min "
                     f"| {r['peak_rss_gb']:.2f} | {r['date']} |")
    lines += ["", "| LiteRT run | decode tok/s | prefill 512 tok/s | first token, 512-token prompt | "
              "peak RSS GB (file GB + one KV cache GB) | date |", "| --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        lines.append(
            f"| {r['quantize']} ({r['shape']}, {r.get('runner', 'Interpreter')}, {r['threads']} threads) "
            f"| {r['decode_tokens_per_second']:.2f} "
            f"| {r['prefill_512_tokens_per_second']:.1f} | {r['first_token_512_seconds']:.1f} s "
            f"| {r['peak_rss_gb']:.2f} ({r['file_bytes'] / 1e9:.2f} + {r['kv_cache_gb']:.2f}) | {r['date']} |")
    replace_section(DOC, START, END, "\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["checkpoint", "export", "run", "export-child", "run-child"])
    parser.add_argument("variants", nargs="*", default=["int8"])
    parser.add_argument("--workdir", default="/tmp/tf_mistral_scale")
    parser.add_argument("--layers", type=int, default=0, help="decoder layers (default: 32, the 7B shape)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    shape = f"{args.layers} layers" if args.layers else "7B"
    folder = os.path.join(args.workdir, f"checkpoint_{args.layers or 32}")
    if args.what == "checkpoint":
        make_checkpoint(folder, args.layers)
        return
    if args.what == "export-child":
        export_child(folder, args.variants[1], args.variants[0])
        return
    if args.what == "run-child":
        run_child(args.variants[1], args.variants[0], args.threads)
        return
    results = os.path.join(args.workdir, "results.jsonl")
    for quantize in args.variants:
        path = os.path.join(args.workdir, f"mistral_{args.layers or 32}_{quantize}.tflite")
        common = ["--workdir", args.workdir, "--layers", str(args.layers), "--threads", str(args.threads)]
        if args.what == "export":
            row = in_child("export-child", quantize, path, *common)
        else:
            row = in_child("run-child", quantize, path, *common)
        row.update(shape=shape, date=time.strftime("%Y-%m-%d"))
        print(json.dumps(row))
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
    write_doc(results)


if __name__ == "__main__":
    main()
