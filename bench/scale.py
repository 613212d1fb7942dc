"""Mistral-7B's exact shape on this machine: a random checkpoint, the LiteRT export's memory and
time per variant, and the speed and memory of every inference path at that shape.

    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/scale.py checkpoint          # 14.5 GB, a few minutes
    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/scale.py export int8 int4 fp16
    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/scale.py run hf keras keras-int8 saved-model int8 int4 q8_0 q4_0

`--layers N` makes the same shape with N decoder layers (8 layers: 2.1B parameters), to iterate
before the 7B run. The checkpoint (`--workdir`, default /tmp/tf_mistral_scale) is kept out of
git; its tensors are N(0, 0.02) in bfloat16, norms 1, written one tensor at a time.

`run` paths, batch 1, `--threads` threads, one after another (one session):
- hf: HF transformers `MistralForCausalLM.generate`, torch bf16; keras: tf_mistral `generate`,
  bf16; keras-int8: the same after Keras `quantize("int8")` of the bf16 weights; saved-model: a
  bf16 SavedModel exported with max_length 1024 (its export is a row too, and is deleted after
  the run), its `generate` signature called by TensorFlow + TF Text alone. Each `generate` path is
  timed by `measure`: per prompt (32 and 512 random tokens, the same for every path) a first
  call (tracing, compiling, reading mapped weights), then one 1-token request, the time to first
  token; decode is 16 tokens after the 32-token prompt, `16 / (t(1 + 16 tokens) - t(1 token))`.
- int8 / int4 / fp16: the exported LiteRT file with `TFLiteRunner` (int4 in blocks of 128, the
  export's default; int4-b32 / -b64 / -b256 in other block sizes) (prefill 32 and 512, then 16
  decode steps after the 512 tokens).
- q8_0 / q4_0: llama.cpp's `llama-bench -p 32,512 -n 16 -r 1` on a GGUF of the same checkpoint,
  made by bench/llama_cpp.py (which builds what is missing).
Each export and each run happens in a fresh process, so its peak RSS (`ru_maxrss`) is its own.
Rows are appended to `results.jsonl` in the workdir with their session (the start time of the
command that made them) and the table in docs/scale.md is rewritten from them and from
bench/llama_cpp.py's own results; ratios are against HF bf16 of the same session.
"""  # noqa: E501

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import shlex
import shutil
import subprocess
import sys
import time

import llama_cpp
import ml_dtypes
import numpy as np

from doc_section import replace_section
import runtimes

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scale.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
PREFILL_LENGTHS = (32, 128, 512)
CACHE_LENGTH = 1024
SAVED_MODEL_MAX_LENGTH = 1024
DECODE_STEPS = 16
PATHS = {
    "hf": "HF transformers + torch, bf16",
    "keras": "tf_mistral Keras `generate`, bf16",
    "keras-int8": "tf_mistral Keras `generate` after `quantize(\"int8\")`",
    "saved-model": f"tf_mistral SavedModel, bf16, `--max-length {SAVED_MODEL_MAX_LENGTH}`",
    "int8": "tf_mistral LiteRT int8 (`TFLiteRunner`)",
    "int4-b32": "tf_mistral LiteRT int4, blocks of 32 (`TFLiteRunner`)",
    "int4-b64": "tf_mistral LiteRT int4, blocks of 64 (`TFLiteRunner`)",
    "int4": "tf_mistral LiteRT int4, blocks of 128, the default (`TFLiteRunner`)",
    "int4-b256": "tf_mistral LiteRT int4, blocks of 256 (`TFLiteRunner`)",
    "fp16": "tf_mistral LiteRT fp16 (`TFLiteRunner`)",
    "q8_0": "llama.cpp Q8_0 (`llama-bench`)",
    "q4_0": "llama.cpp Q4_0 (`llama-bench`)",
}
TFLITE, LLAMA_CPP = ("int8", "int4-b32", "int4-b64", "int4", "int4-b256", "fp16"), ("q8_0", "q4_0")
INT4_BLOCKS = {"int4-b32": 32, "int4-b64": 64, "int4": 128, "int4-b256": 256}
LOCK = llama_cpp.LOCK


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


def export_child(checkpoint, output, variant):
    """One export, a LiteRT variant or "saved-model" (version 1 under `output`); prints a JSON line
    with its time, size and peak RSS."""
    started = time.perf_counter()
    if variant == "saved-model":
        from tf_mistral.export.saved_model import export_saved_model

        result = export_saved_model(checkpoint, output, version=1, max_length=SAVED_MODEL_MAX_LENGTH, progress=False)
        size = folder_bytes(result["path"])
    else:
        from tf_mistral.export.tflite import export_tflite

        result = export_tflite(checkpoint, output, quantize=variant.split("-")[0], prefill_lengths=PREFILL_LENGTHS,
                               cache_length=CACHE_LENGTH, int4_block_size=INT4_BLOCKS.get(variant))
        size = result["bytes"]
    print(json.dumps(dict(kind="export", quantize=variant, int4_block_size=INT4_BLOCKS.get(variant),
                          seconds=time.perf_counter() - started, bytes=size,
                          peak_rss_gb=_peak_rss_gb(),
                          stages=[(s, round(t, 1), round(r, 2)) for s, t, r in result["stages"]])))


def prompts():
    """The random prompts of every path: {32: int32 [1, 32], 512: int32 [1, 512]}."""
    rng = np.random.default_rng(1)
    return {length: rng.integers(3, 32000, (1, length)).astype(np.int32) for length in (32, 512)}


def run_child(path, quantize, threads):
    """Prefill (32 and 512 tokens: time to first token) and 16 decode steps with TFLiteRunner."""
    from tf_mistral.tflite_runner import TFLiteRunner

    started = time.perf_counter()
    runner = TFLiteRunner(path, num_threads=threads)
    load = time.perf_counter() - started
    with open(f"{path}.json") as sidecar:
        block_size = json.load(sidecar).get("int4_block_size")
    figures = dict(kind="run", runner="CompiledModel", quantize=quantize, threads=threads, load_seconds=load,
                   file_bytes=os.path.getsize(path), int4_block_size=block_size)
    for length, prompt in prompts().items():
        prompt = prompt[0]
        started = time.perf_counter()
        cache = runner.prefill(prompt[:-1], runner.empty_cache(), 0)
        logits, cache = runner.decode(int(prompt[-1]), cache, length - 1)
        figures[f"first_token_{length}_seconds"] = time.perf_counter() - started
        figures[f"prefill_{length}_tokens_per_second"] = length / figures[f"first_token_{length}_seconds"]
    token, position, steps = int(np.argmax(logits)), 512, DECODE_STEPS
    started = time.perf_counter()
    for _ in range(steps):
        logits, cache = runner.decode(token, cache, position)
        token, position = int(np.argmax(logits)), position + 1
    figures["decode_tokens_per_second"] = steps / (time.perf_counter() - started)
    figures["peak_rss_gb"] = _peak_rss_gb()
    figures["kv_cache_gb"] = sum(v.nbytes for v in cache.values()) / 1e9
    print(json.dumps(figures))


def generate_child(name, target, threads):
    """Loads one `generate` path (`target`: the checkpoint, or the SavedModel version folder),
    `measure`s it and prints a JSON line with the figures, its load time and peak RSS."""
    makers = {
        "hf": lambda: runtimes.hf(target, "bfloat16", threads, resident=True),
        "keras": lambda: runtimes.keras(target, "bfloat16", threads=threads),
        "keras-int8": lambda: runtimes.keras(target, "bfloat16", quantize="int8", threads=threads),
        "saved-model": lambda: runtimes.saved_model(target, threads),
    }
    started = time.perf_counter()
    generate = makers[name]()
    figures = dict(kind="run", threads=threads, load_seconds=time.perf_counter() - started)
    figures.update(measure(generate))
    figures["peak_rss_gb"] = _peak_rss_gb()
    print(json.dumps(figures))


def measure(generate):
    """Times `generate(ids, new_tokens)` on `prompts()`. Per prompt: a first 1-token call (tracing,
    compiling, pages of mapped weights: its extra seconds are reported), then a timed one, the
    time to first token. Decode: `DECODE_STEPS` tokens after the 32-token prompt, from
    `t(1 + DECODE_STEPS tokens) - t(1 token)`; its greedy tokens are kept to compare paths."""

    def timed(ids, new_tokens):
        started = time.perf_counter()
        out = generate(ids, new_tokens)
        return time.perf_counter() - started, out[0, ids.shape[1]:].tolist()

    figures = {}
    for length, ids in prompts().items():
        first, _ = timed(ids, 1)
        seconds, _ = timed(ids, 1)
        figures.update({f"first_call_{length}_extra_seconds": first - seconds, f"first_token_{length}_seconds": seconds,
                        f"prefill_{length}_tokens_per_second": length / seconds})
    seconds, tokens = timed(prompts()[32], 1 + DECODE_STEPS)
    figures.update(decode_tokens_per_second=DECODE_STEPS / (seconds - figures["first_token_32_seconds"]),
                   tokens=tokens)
    return figures


def _peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(parent, name)) for parent, _, names in os.walk(folder) for name in names)


def in_child(*args):
    """Runs this script's `args` in a fresh process; returns its last stdout line as a dict."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measured(what, name, args, folder):
    """The result rows of one export or run, each measured in a fresh process (llama.cpp: its
    llama-bench process)."""
    common = ["--workdir", args.workdir, "--layers", str(args.layers), "--threads", str(args.threads)]
    tflite = os.path.join(args.workdir, f"mistral_{args.layers or 32}_{name}.tflite")
    if what == "export":
        return [in_child("export-child", name, tflite, *common)]
    if name in TFLITE:
        return [in_child("run-child", name, tflite, *common)]
    if name in LLAMA_CPP:
        rows = list(llama_cpp.measure(folder, [name.upper()], threads=args.threads, lock=False))
        for row in rows:
            row["llama_bench_command"] = row.pop("command")
        return rows
    if name != "saved-model":
        return [dict(in_child("run-child", name, folder, *common), file_bytes=folder_bytes(folder))]
    base = os.path.join(args.workdir, f"saved_model_{args.layers or 32}")
    try:  # 14.5 GB at 7B: deleted right after its run
        export = in_child("export-child", name, base, *common)
        run = in_child("run-child", name, os.path.join(base, "1"), *common)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return [export, dict(run, file_bytes=export["bytes"])]


# ----------------------------------------------------------------------------------------------
# docs/scale.md


def shape_name(layers):
    return f"{layers} layers" if layers and layers != 32 else "7B"


def _path(row):
    """A row's `run` path (older rows: the LiteRT variant, or llama.cpp's type; int4 rows that
    do not record their block size are from before it was a choice: blocks of 32)."""
    path = row.get("path") or row.get("quantize") or row["type"].lower()
    return "int4-b32" if path == "int4" and "int4_block_size" not in row else path


def _shape(row):
    return row.get("shape") or shape_name(int(row["checkpoint"].rsplit("_", 1)[1]))


def _session(row):
    """The start of the command that made the row; rows from before sessions were recorded have
    their date alone, and are never compared with each other."""
    return row.get("session") or row["date"]


def write_doc(results_files):
    rows = [json.loads(line) for path in results_files if os.path.exists(path) for line in open(path)]
    rows.sort(key=_session)  # stable: each file's rows stay in the order they ran
    lines = ["| export | file GB | time | peak RSS GB | date |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["kind"] == "export":
            name = (f"SavedModel bf16, max_length {SAVED_MODEL_MAX_LENGTH}" if _path(r) == "saved-model"
                    else f"LiteRT {_path(r)}")
            lines.append(f"| {name} ({_shape(r)}) | {r['bytes'] / 1e9:.2f} | {r['seconds'] / 60:.1f} min "
                         f"| {r['peak_rss_gb']:.2f} | {r['date']} |")
    runs = [r for r in rows if r["kind"] != "export"]
    for shape in sorted({_shape(r) for r in runs}, key=lambda shape: shape != "7B"):
        lines += ["", *runs_table(shape, [r for r in runs if _shape(r) == shape])]
    lines += ["", "Sessions: the rows of one session ran one after another, each in its own process (a date "
                  "alone: rows from before sessions were recorded, not one session).", ""]
    lines += sessions(runs)
    replace_section(DOC, START, END, "\n".join(lines))


def runs_table(shape, rows):
    """One row per run of `shape`; decode and prefill also as a ratio to HF bf16 of the same session."""
    from tf_mistral.demo import matching_prefix

    hf = {r["session"]: r for r in rows if _path(r) == "hf" and "session" in r}
    lines = [f"| {shape}, batch 1 | session | decode tok/s | prefill 512 tok/s | first token, 512 prompt "
             "| prefill 32 tok/s | peak RSS GB | model GB | load s | first 512 call, extra s | greedy = HF |",
             "| --- " * 11 + "|"]
    rows = sorted(rows, key=lambda r: (_session(r), list(PATHS).index(_path(r))))
    for r in rows:
        reference = hf.get(r.get("session"))

        def versus_hf(key, digits):
            text = f"{r[key]:.{digits}f}"
            return text if reference in (None, r) else f"{text} ({r[key] / reference[key]:.2f}x)"

        def figure(key, template, unit=1):
            return template.format(r[key] / unit) if key in r else "-"

        same = "-" if reference in (None, r) or "tokens" not in r else \
            f"{matching_prefix(r['tokens'], reference['tokens'])}/{len(reference['tokens'])}"
        lines.append(
            f"| {PATHS[_path(r)]} | {_session(r)} | {versus_hf('decode_tokens_per_second', 2)} "
            f"| {versus_hf('prefill_512_tokens_per_second', 2)} | {r['first_token_512_seconds']:.0f} s "
            f"| {r['prefill_32_tokens_per_second']:.2f} | {r['peak_rss_gb']:.2f} "
            f"| {figure('file_bytes', '{:.2f}', 1e9)} "
            f"| {figure('load_seconds', '{:.0f}')} | {figure('first_call_512_extra_seconds', '{:.0f}')} | {same} |")
    return lines


def sessions(rows):
    """A line per session: the load average before its runs and the commands that made its rows."""
    by_session = {}
    for r in rows:
        by_session.setdefault(_session(r), []).append(r)
    lines = []
    for session, members in by_session.items():
        loads = [r["load_average"] for r in members if "load_average" in r]
        revisions = sorted({r["revision"] for r in members if "revision" in r})
        commands = sorted({r["command"] for r in members if "command" in r})
        notes = ([f"load average {min(loads):.1f}-{max(loads):.1f} before its runs"] if loads else []) + \
            [f"source {', '.join(revisions)}"] * bool(revisions)
        lines.append(f"- {session}{' (' + '; '.join(notes) + ')' if notes else ''}: "
                     + ("; ".join(f"`{c}`" for c in commands) or "commands not recorded"))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["checkpoint", "export", "run", "export-child", "run-child"])
    parser.add_argument(
        "variants", nargs="*", default=["int8"], help=f"exports: LiteRT variants; runs: {', '.join(PATHS)}"
    )
    parser.add_argument("--workdir", default="/tmp/tf_mistral_scale")
    parser.add_argument("--layers", type=int, default=0, help="decoder layers (default: 32, the 7B shape)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-doc", action="store_true", help="leave docs/scale.md as it is")
    args = parser.parse_args()
    folder = os.path.join(args.workdir, f"checkpoint_{args.layers or 32}")
    if args.what == "checkpoint":
        make_checkpoint(folder, args.layers)
        return
    if args.what == "export-child":
        export_child(folder, args.variants[1], args.variants[0])
        return
    if args.what == "run-child":
        name, target = args.variants
        if name in TFLITE:
            run_child(target, name, args.threads)
        else:
            generate_child(name, target, args.threads)
        return
    if args.what == "export" and "saved-model" in args.variants:
        parser.error("`run saved-model` exports the SavedModel (and deletes it after its run)")
    if args.what == "run" and set(args.variants) - set(PATHS):
        parser.error(f"no path {sorted(set(args.variants) - set(PATHS))}: run one of {', '.join(PATHS)}")
    results = os.path.join(args.workdir, "results.jsonl")
    revision = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True)
    session = dict(session=time.strftime("%Y-%m-%d %H:%M"), date=time.strftime("%Y-%m-%d"),
                   shape=shape_name(args.layers),
                   command=shlex.join(["flock", LOCK, ".venv/bin/python", "bench/scale.py", *sys.argv[1:]]),
                   revision=revision.stdout.strip())
    for name in args.variants:
        load_average = os.getloadavg()[0]
        for row in measured(args.what, name, args, folder):
            row.update(session, path=name, load_average=load_average)
            print(json.dumps(row), flush=True)
            with open(results, "a") as f:
                f.write(json.dumps(row) + "\n")
    if not args.no_doc:
        write_doc([results, llama_cpp.WORKDIR / "results.jsonl"])


if __name__ == "__main__":
    main()
