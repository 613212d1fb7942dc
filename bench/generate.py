"""Generation speed: tf_mistral `generate` against HF transformers (PyTorch) `generate` and KerasHub
`MistralCausalLM.generate`, side by side on one checkpoint, each run in a fresh process.

    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/generate.py            # about 20 min
    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/generate.py --quick    # a smoke run

Makes (once, with torch + transformers, in --workdir) a random Mistral-shaped checkpoint of 175M
parameters (hidden 1024, 8 layers, 16 heads, 4 kv heads, intermediate 3584, vocab 32000, window
256) and runs all three on its weights: ours through `from_pretrained`, HF through its own
`from_pretrained`, KerasHub as a `MistralBackbone` of the same config with the same float32 tensors
copied in (its own converter rounds them through float16); KerasHub runs as `compile()` leaves it
on a CPU-only machine (a TF graph, no XLA) and, for batch 1, also with `jit_compile=True`.
Greedy decoding, eos disabled, random prompt ids. For each case (batch, prompt length, dtype, path):
- decode tokens/s: `batch * (N2 - N1) / (t(N2) - t(N1))` for two generation lengths N1 < N2, so
  prefill and the per-call overhead cancel (KerasHub's prefill runs over the whole `max_length`,
  so its difference also holds `N2 - N1` tokens of prefill, about 1% of it);
- prefill tokens/s: `batch * prompt / t(1 new token)`;
- end-to-end: `t(N2)`; first call: the first `t(1)` less a later one (tracing and compiling);
- peak RSS of the process (`ru_maxrss`);
- greedy agreement: how many leading new tokens of each peer equal ours (same weights; random
  weights give close logits, so summation order alone may part them after a while).
Every time is the minimum of --repeats runs (the machine is shared; the minimum is the run least
disturbed). Writes the tables into docs/benchmarks.md between the generation markers.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from doc_section import replace_section
import runtimes
from tf_mistral.demo import matching_prefix

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "docs", "benchmarks.md")
COMMAND = "flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/generate.py"
BEGIN, END = "<!-- generation:begin -->", "<!-- generation:end -->"

MODEL = dict(
    vocab_size=32000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
    num_attention_heads=16, num_key_value_heads=4, head_dim=64, max_position_embeddings=32768,
    rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=256, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2,
)
RUNNERS = {
    "ours": "tf_mistral `generate` (XLA loop)",
    "ours_graph": "tf_mistral `generate(jit_compile=False)` (TF graph loop)",
    "hf": "HF transformers `generate` (PyTorch)",
    "keras_hub": "KerasHub `MistralCausalLM.generate` (TF graph, Keras' CPU default)",
    "keras_hub_xla": "KerasHub `MistralCausalLM.generate` (`jit_compile=True`)",
}
# Lower-precision rows: ours from `from_pretrained(dtype="bfloat16")` / Keras `quantize("int8")`;
# HF in torch.bfloat16 / `torch.ao.quantization.quantize_dynamic` (int8 nn.Linear); KerasHub bf16.
DTYPES = ("bfloat16", "int8")
PEERS_BY_DTYPE = {"bfloat16": ("ours", "ours_graph", "hf", "keras_hub"), "int8": ("ours", "ours_graph", "hf")}


# ----------------------------------------------------------------------------------------------
# Child process: one runner, one case


def make_keras_hub(folder, dtype, jit_compile=False):
    """KerasHub's model; `compile()` leaves XLA off on a CPU-only machine unless asked."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras_hub
    from safetensors.numpy import load_file

    config = json.load(open(os.path.join(folder, "config.json")))
    backbone = keras_hub.models.MistralBackbone(
        vocabulary_size=config["vocab_size"], num_layers=config["num_hidden_layers"],
        num_query_heads=config["num_attention_heads"], hidden_dim=config["hidden_size"],
        intermediate_dim=config["intermediate_size"], num_key_value_heads=config["num_key_value_heads"],
        rope_max_wavelength=MODEL["rope_theta"], layer_norm_epsilon=config["rms_norm_eps"],
        sliding_window=config["sliding_window"], head_dim=config["head_dim"], dtype=dtype,
    )
    copy_into_keras_hub(backbone, load_file(os.path.join(folder, "model.safetensors")))
    model = keras_hub.models.MistralCausalLM(backbone=backbone, preprocessor=None)
    model.compile(sampler="greedy", jit_compile=jit_compile)

    def generate(ids, new_tokens):
        batch, prompt = ids.shape
        token_ids = np.zeros((batch, prompt + new_tokens), np.int32)
        token_ids[:, :prompt] = ids
        mask = np.zeros(token_ids.shape, bool)
        mask[:, :prompt] = True
        out = model.generate({"token_ids": token_ids, "padding_mask": mask}, stop_token_ids=None)
        return np.asarray(out["token_ids"])

    return generate


def copy_into_keras_hub(backbone, tensors):
    """HF `[out, in]` tensors into KerasHub's variables, in float32 (no float16 detour)."""
    def put(variable, array):
        variable.assign(np.reshape(array, variable.shape).astype(variable.dtype))

    put(backbone.token_embedding.embeddings, tensors["model.embed_tokens.weight"])
    put(backbone.token_embedding.reverse_embeddings, tensors["lm_head.weight"].T)
    put(backbone.layer_norm.scale, tensors["model.norm.weight"])
    for i, layer in enumerate(backbone.transformer_layers):
        prefix = f"model.layers.{i}."
        attention = layer._self_attention_layer
        put(layer._self_attention_layernorm.scale, tensors[prefix + "input_layernorm.weight"])
        put(layer._feedforward_layernorm.scale, tensors[prefix + "post_attention_layernorm.weight"])
        for dense, name in [(attention._query_dense, "q_proj"), (attention._key_dense, "k_proj"),
                            (attention._value_dense, "v_proj"), (attention._output_dense, "o_proj")]:
            put(dense.kernel, tensors[prefix + f"self_attn.{name}.weight"].T)
        for dense, name in [(layer._feedforward_gate_dense, "gate_proj"),
                            (layer._feedforward_intermediate_dense, "up_proj"),
                            (layer._feedforward_output_dense, "down_proj")]:
            put(dense.kernel, tensors[prefix + f"mlp.{name}.weight"].T)


def child(runner, folder, dtype, batch, prompt, lengths, repeats):
    start = time.perf_counter()
    if runner in ("ours", "ours_graph"):
        quantize = "int8" if dtype == "int8" else None
        generate = runtimes.keras(folder, "float32" if quantize else dtype, quantize, jit_compile=runner == "ours")
    elif runner == "hf":
        generate = runtimes.hf(folder, dtype)
    else:
        generate = make_keras_hub(folder, dtype, jit_compile=runner == "keras_hub_xla")
    load = time.perf_counter() - start
    ids = np.random.default_rng(0).integers(3, MODEL["vocab_size"], size=(batch, prompt)).astype(np.int32)
    first, tokens, best = {}, None, {}
    for n in (1, *lengths):  # first calls: trace / compile each length once
        start = time.perf_counter()
        out = generate(ids, n)
        first[n] = time.perf_counter() - start
        assert out.shape == (batch, prompt + n), out.shape
    for _ in range(repeats):
        for n in (1, *lengths):
            start = time.perf_counter()
            out = generate(ids, n)
            best[n] = min(best.get(n, float("inf")), time.perf_counter() - start)
            if n == lengths[-1]:
                tokens = out[0, prompt:].tolist()
    short, long = lengths
    print(json.dumps({
        "load_s": load,
        "decode_tps": batch * (long - short) / (best[long] - best[short]),
        "prefill_tps": batch * prompt / best[1],
        "e2e_s": best[long],
        "compile_s": first[1] - best[1],
        "tokens": tokens,
    }))


# ----------------------------------------------------------------------------------------------
# Parent: the checkpoint, the cases, the tables


def make_checkpoint(folder):
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(transformers.MistralConfig(**MODEL))
    model.save_pretrained(folder)


def run_case(args, runner, dtype, batch, prompt):
    """Runs one case in a fresh process; returns its JSON result plus peak RSS, or None if it failed."""
    command = [sys.executable, __file__, "--child", runner, "--workdir", args.workdir, "--dtype", dtype,
               "--batch", str(batch), "--prompt", str(prompt), "--lengths", *map(str, args.lengths),
               "--repeats", str(args.repeats)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env)
        output = process.stdout.read().decode()
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        lines = [line for line in output.splitlines() if line.startswith("{")]
        if process.returncode or not lines:
            print(f"{runner} {dtype} b{batch} p{prompt} failed:\n{errors.read().decode()[-3000:]}", file=sys.stderr)
            return None
    result = json.loads(lines[-1])
    result.update(runner=runner, dtype=dtype, batch=batch, prompt=prompt, peak_rss_mb=usage.ru_maxrss / 1024)
    print(json.dumps({k: v for k, v in result.items() if k != "tokens"}), flush=True)
    return result


def tables(results, args):
    def find(runner, dtype, batch, prompt):
        for r in results:
            if r and (r["runner"], r["dtype"], r["batch"], r["prompt"]) == (runner, dtype, batch, prompt):
                return r

    short, long = args.lengths
    lines = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
             f"float32 unless said; greedy; new tokens N1={short}, N2={long}; min of {args.repeats} runs.", ""]
    lines += ["| case | runner | decode tok/s | prefill tok/s | end-to-end s | first-call compile s | peak RSS MB "
              "| greedy tokens equal to ours |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, batch, prompt in cases(args):
        reference = find("ours", "float32", batch, prompt)
        for runner in RUNNERS:
            r = find(runner, "float32", batch, prompt)
            if r is None:
                continue
            agree = "-" if runner == "ours" or reference is None else \
                f"{matching_prefix(r['tokens'], reference['tokens'])}/{long}"
            lines.append(f"| {label} | {RUNNERS[runner]} | {r['decode_tps']:.1f} | {r['prefill_tps']:.0f} | "
                         f"{r['e2e_s']:.2f} | {r['compile_s']:.1f} | {r['peak_rss_mb']:.0f} | {agree} |")
    names = {"hf": "HF", "keras_hub": "KerasHub", "keras_hub_xla": "KerasHub with XLA"}
    for label, batch, prompt in cases(args):
        ours = find("ours", "float32", batch, prompt)
        peers = [(name, find(runner, "float32", batch, prompt)) for runner, name in names.items()]
        ratios = [f"ours / {name}: decode {ours['decode_tps'] / r['decode_tps']:.2f}x, prefill "
                  f"{ours['prefill_tps'] / r['prefill_tps']:.2f}x" for name, r in peers if ours and r]
        if ratios:
            lines += ["", f"{label}: " + "; ".join(ratios) + "."]
    lines += ["", f"Other dtypes (batch 1, prompt {args.prompt}):", "",
              "| dtype | runner | decode tok/s | prefill tok/s | end-to-end s | first-call compile s | peak RSS MB |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for dtype in DTYPES:
        for runner in RUNNERS:
            r = find(runner, dtype, 1, args.prompt)
            if r is not None:
                lines.append(f"| {dtype} | {RUNNERS[runner]} | {r['decode_tps']:.1f} | {r['prefill_tps']:.0f} | "
                             f"{r['e2e_s']:.2f} | {r['compile_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", f"Command: `{COMMAND}{' --quick' if args.quick else ''}`"]
    return "\n".join(lines)


def cases(args):
    """(label, batch, prompt) of the float32 cases."""
    return [("batch 1, short prompt", 1, args.prompt), ("batch 1, prompt 2048", 1, args.long_prompt),
            ("batch 8", 8, args.prompt)]


def write_doc(text):
    replace_section(DOC, BEGIN, END, text, heading="## Generation\n\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/tf_mistral_bench_generate")
    parser.add_argument("--child", choices=sorted(RUNNERS))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--long-prompt", type=int, default=2048)
    parser.add_argument("--lengths", type=int, nargs=2, default=[32, 288])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=sorted(RUNNERS))
    parser.add_argument("--quick", action="store_true", help="lengths 16 64, one repeat, long prompt 512")
    parser.add_argument("--no-doc", action="store_true", help="print the tables, leave the doc alone")
    args = parser.parse_args()
    folder = os.path.join(args.workdir, "mistral_175m")
    if args.child:
        child(args.child, folder, args.dtype, args.batch, args.prompt, args.lengths, args.repeats)
        return
    if args.quick:
        args.lengths, args.repeats, args.long_prompt = [16, 64], 1, 512
    make_checkpoint(folder)
    results = []
    for _, batch, prompt in cases(args):
        for runner in args.runners:
            if runner not in ("ours_graph", "keras_hub_xla") or (batch, prompt) == (1, args.prompt):
                results.append(run_case(args, runner, "float32", batch, prompt))
    for dtype in DTYPES:
        for runner in PEERS_BY_DTYPE[dtype]:
            if runner in args.runners:
                results.append(run_case(args, runner, dtype, 1, args.prompt))
    text = tables(results, args)
    print(text)
    if not args.no_doc:
        write_doc(text)


if __name__ == "__main__":
    main()
