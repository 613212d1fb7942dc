"""Peak memory while loading a Hugging Face Mistral checkpoint, as a multiple of the weights' bytes.

    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/memory.py

Makes (once, with torch + transformers, in --workdir) a random Mistral-shaped checkpoint of
2.15 GB in float32 and its 1.07 GB bfloat16 copy, then loads each in a fresh process with:
tf_mistral `TFMistralForCausalLM.from_pretrained`; HF transformers
`MistralForCausalLM.from_pretrained`, with and without reading each parameter once (its weights
are views of a memory map, read on first use); KerasHub `MistralBackbone.from_preset(folder)` (the
local HF folder; the backbone holds the lm_head too). A process's peak RSS is its `ru_maxrss`
(from `os.wait4`); the baseline is the peak of a separate process that imports the same framework
and runs one op; the ratio is `(peak - baseline) / weight bytes`. Writes the table into
docs/memory.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from doc_section import replace_section

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "docs", "memory.md")
COMMAND = "flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/memory.py"
GOAL = 1.3

# hidden 2048, 9 layers of 16 heads (head_dim 128) / 4 kv heads, vocab 32000: 537M parameters.
MODEL = dict(
    vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=9,
    num_attention_heads=16, num_key_value_heads=4, head_dim=128, max_position_embeddings=4096,
    rms_norm_eps=1e-5, sliding_window=4096, tie_word_embeddings=False,
)
LOADERS = {
    "ours": "tf_mistral `TFMistralForCausalLM.from_pretrained`",
    "hf": "HF transformers `MistralForCausalLM.from_pretrained`, then each parameter read once",
    "hf_mmap": "HF transformers `MistralForCausalLM.from_pretrained` (pages of the mmap not yet read)",
    "keras_hub": "KerasHub `MistralBackbone.from_preset(folder)`",
}


# ----------------------------------------------------------------------------------------------
# Child processes: one load (or one baseline) each


def current_rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load_ours(folder, dtype):
    import tensorflow as tf

    import tf_mistral

    tf.constant(1.0) + 1.0
    if folder:
        return tf_mistral.TFMistralForCausalLM.from_pretrained(folder, dtype=dtype, progress=False)


def load_hf(folder, dtype, touch=True):
    import torch
    import transformers

    torch.ones(1) + 1
    if folder:
        model = transformers.MistralForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
        if touch:
            # Its parameters are views of the memory-mapped file whose pages are read on first
            # use; read each once so that the model is resident, as ours is after loading.
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.sum()
        return model


def load_hf_mmap(folder, dtype):
    return load_hf(folder, dtype, touch=False)


def load_keras_hub(folder, dtype):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras_hub
    import tensorflow as tf

    tf.constant(1.0) + 1.0
    if folder:
        # KerasHub reads a local HF folder (config.json with "model_type") through its
        # transformers converter; the backbone holds every weight, lm_head included.
        return keras_hub.models.MistralBackbone.from_preset(folder, dtype=dtype)


def child(loader, dtype, folder):
    start = time.perf_counter()
    loaders = {"ours": load_ours, "hf": load_hf, "hf_mmap": load_hf_mmap, "keras_hub": load_keras_hub}
    model = loaders[loader](folder, dtype)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "final_rss": current_rss(), "loaded": model is not None}))


def make_checkpoints(workdir):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.MistralConfig(**MODEL)
    model = transformers.MistralForCausalLM(config)
    model.save_pretrained(os.path.join(workdir, "float32"))
    model.to(torch.bfloat16).save_pretrained(os.path.join(workdir, "bfloat16"))


# ----------------------------------------------------------------------------------------------
# Parent: runs the children, writes the table


def run(*args):
    """Runs `memory.py *args` in a fresh process; returns (its JSON line, its peak RSS in bytes)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, env=env)
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"memory.py {' '.join(args)} failed ({process.returncode})")
    lines = [line for line in output.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), usage.ru_maxrss * 1024


def weight_bytes(folder):
    """Bytes of tensor data in a checkpoint folder (safetensors files minus their headers)."""
    total = 0
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            with open(os.path.join(folder, name), "rb") as f:
                header = int.from_bytes(f.read(8), "little")
            total += os.path.getsize(os.path.join(folder, name)) - 8 - header
    return total


def measure(workdir, loaders, dtypes, repeats):
    rows = []
    baselines = {}
    for loader in loaders:
        framework = "hf" if loader == "hf_mmap" else loader
        if framework not in baselines:
            baselines[framework] = min(run("--child", framework, "float32", "")[1] for _ in range(repeats))
        baselines[loader] = baselines[framework]
    for dtype in dtypes:
        folder = os.path.join(workdir, dtype)
        weights = weight_bytes(folder)
        for loader in loaders:
            runs = [run("--child", loader, dtype, folder) for _ in range(repeats)]
            result, peak = min(runs, key=lambda r: r[1])
            row = dict(loader=loader, dtype=dtype, weights=weights, peak=peak, baseline=baselines[loader],
                       final=result["final_rss"], seconds=result["seconds"])
            row["ratio"] = (peak - row["baseline"]) / weights
            row["kept"] = (row["final"] - row["baseline"]) / weights
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def table(rows):
    gb = 1e9
    lines = [
        "| loader | checkpoint dtype | weights (GB) | peak RSS (GB) | baseline (GB) | peak - baseline (GB) "
        "| **peak / weights** | RSS after load / weights | load (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {LOADERS[r['loader']]} | {r['dtype']} | {r['weights'] / gb:.2f} | {r['peak'] / gb:.2f} "
            f"| {r['baseline'] / gb:.2f} | {(r['peak'] - r['baseline']) / gb:.2f} | **{r['ratio']:.2f}x** "
            f"| {r['kept']:.2f}x | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def write_doc(text):
    replace_section(DOC, "<!-- memory table begin -->", "<!-- memory table end -->", text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/tf_mistral_memory_bench",
                        help="where the checkpoints are made (kept and reused between runs)")
    parser.add_argument("--loaders", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2, help="runs per cell; the lowest peak is kept")
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    parser.add_argument("--child", nargs=3, metavar=("LOADER", "DTYPE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--make", metavar="WORKDIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.make:
        return make_checkpoints(args.make)

    if not all(os.path.exists(os.path.join(args.workdir, d, "config.json")) for d in ("float32", "bfloat16")):
        print(f"making the checkpoints in {args.workdir} ...", flush=True)
        run("--make", args.workdir)
    rows = measure(args.workdir, args.loaders, args.dtypes, args.repeats)
    text = table(rows)
    print(text)
    if not args.no_doc:
        write_doc(text)


if __name__ == "__main__":
    main()
