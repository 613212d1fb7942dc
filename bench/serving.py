"""SavedModel (TF Serving) generation speed beside Keras `generate`, and the RAM an export needs.

    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/serving.py

Makes (once, in --workdir) the random 175M benchmark checkpoint of bench/tflite.py (hidden 1024,
8 layers, 16 heads / 4 kv heads, intermediate 3584, vocab 32000, window 256; bfloat16 safetensors)
and uses the real Mistral v0.1 tokenizer (embedded). Then, each in a fresh process:
  - exports it twice in float32, the default (no XLA) and `--xla`, max_length 1024, max_new_tokens
    64, recording the export's peak RSS;
  - loads each SavedModel with only tensorflow + tensorflow_text and times `generate_text`
    (greedy, 64 new tokens; strings in, strings out) at batch 1 and 8, and a 1-token request
    (time to first token), after a warm-up (which also compiles the XLA variant for that shape);
  - times Keras `generate` (XLA, float32) on the same prompts, tokenized outside the timing.
tokens/s = new tokens of the batch / request latency; "x Keras" = tokens/s over Keras'. One timed
run each. RAM: peak RSS of bfloat16 exports of the tiny fixture, the 175M model, a wider 537M
(hidden 2048, 9 layers) and a deeper 152M (hidden 512, 32 layers) one, fitted as
a + b x weight bytes + c x layers to extrapolate to 7B.
Writes the tables into docs/serving.md between the bench markers.
"""

import argparse
import json
import multiprocessing
import os
import pathlib
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tflite import MODEL, make_checkpoint  # noqa: E402  (the shared 175M benchmark checkpoint)

from doc_section import replace_section
import runtimes

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "serving.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
COMMAND = "flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/serving.py"
MAX_LENGTH, NEW_TOKENS, BATCHES = 1024, 64, (1, 8)
# Extra shapes for the RAM fit: one wider (weight bytes), one deeper (graph size grows with layers).
RAM_MODELS = {
    "537M (hidden 2048, 9 layers)": dict(MODEL, hidden_size=2048, intermediate_size=5632, num_hidden_layers=9,
                                         head_dim=128),
    "deep 152M (hidden 512, 32 layers)": dict(MODEL, hidden_size=512, intermediate_size=1792, num_hidden_layers=32,
                                             num_attention_heads=8, num_key_value_heads=4, head_dim=64),
}
SEVEN_B = dict(MODEL, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128)
PROMPTS = [
    "The history of the Roman Empire spans more than a thousand years, from the founding of the city to",
    "In machine learning, a transformer is a deep learning architecture that relies on attention, and",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who",
    "The recipe calls for two cups of flour, one cup of sugar, three eggs and a pinch of salt. First,",
    "Photosynthesis is the process by which green plants use sunlight to synthesize nutrients from",
    "The stock market closed higher on Tuesday as investors weighed new data on inflation and",
    "To configure the server, open the settings file, find the section named network, and then",
    "Mount Everest, the highest mountain above sea level, lies in the Himalayas on the border between",
]


def _run_in_child(target, *args):
    """Runs `target(*args, queue)` in a fresh process; returns what it puts on the queue (JSON)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = json.loads(queue.get())
    process.join()
    return result


def _export_child(checkpoint, output, dtype, xla, tokenizer, max_length, queue):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tf_mistral.export.saved_model import export_saved_model

    result = export_saved_model(checkpoint, output, max_length=max_length, max_new_tokens=NEW_TOKENS, dtype=dtype,
                                xla=xla, tokenizer=tokenizer, overwrite=True, version=1)
    queue.put(json.dumps({key: result[key] for key in ("path", "peak_rss_gb", "stages")}))


def _time_saved_model_child(path, queue):
    """Latency of `generate_text` through the SavedModel, with only TF + TF Text imported."""
    import tensorflow as tf

    signature = runtimes.saved_model_signatures(path)["generate_text"]
    results = {}
    for batch in BATCHES:
        prompts = tf.constant(PROMPTS[:batch])

        def request(new_tokens):
            knobs = runtimes.greedy_knobs(new_tokens)
            started = time.perf_counter()
            out = signature(prompts=prompts, **knobs)
            return time.perf_counter() - started, out

        request(1), request(NEW_TOKENS)  # warm-up (XLA: compiles this batch and prompt bucket)
        first, _ = request(1)
        seconds, out = request(NEW_TOKENS)
        results[batch] = dict(seconds=seconds, first=first, tokens=int(out["num_tokens"].numpy().sum()),
                              token_ids=out["token_ids"].numpy().tolist())
    queue.put(json.dumps(results))


def _time_keras_child(checkpoint, queue):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tf_mistral import MistralTokenizer, TFMistralForCausalLM

    model = TFMistralForCausalLM.from_pretrained(checkpoint, dtype="float32", progress=False)
    tokenizer = MistralTokenizer.default("v1")
    results = {}
    for batch in BATCHES:
        inputs = tokenizer(PROMPTS[:batch], return_tensors="np", padding=True)

        def request(new_tokens):
            started = time.perf_counter()
            out = model.generate(
                inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=new_tokens
            )
            return time.perf_counter() - started, out[:, inputs["input_ids"].shape[1]:]

        request(1), request(NEW_TOKENS)  # warm-up: compiles both
        first, _ = request(1)
        seconds, out = request(NEW_TOKENS)
        ended = [row.index(2) + 1 if 2 in row else len(row) for row in out.tolist()]
        results[batch] = dict(seconds=seconds, first=first, tokens=int(sum(ended)), token_ids=out.tolist())
    queue.put(json.dumps(results))


def _write_doc(text):
    replace_section(DOC, START, END, text)


def _weight_bytes(config, dtype_bytes):
    from tf_mistral import MistralConfig

    return MistralConfig(**config).num_parameters() * dtype_bytes


def speed_table(workdir, checkpoint):
    exports, timings = {}, {}
    for name, xla in (("default", False), ("xla", True)):
        output = os.path.join(workdir, f"serving_{name}")
        exports[name] = _run_in_child(_export_child, checkpoint, output, "float32", xla, None, MAX_LENGTH)
        print(name, "export peak RSS", exports[name]["peak_rss_gb"], flush=True)
        timings[name] = _run_in_child(_time_saved_model_child, exports[name]["path"])
        print(name, {b: (t["seconds"], t["tokens"]) for b, t in timings[name].items()}, flush=True)
    keras = _run_in_child(_time_keras_child, checkpoint)
    print("keras", {b: (t["seconds"], t["tokens"]) for b, t in keras.items()}, flush=True)
    lines = [
        "| path | batch | first token ms | request s (64 new tokens) | tokens/s | x Keras "
        "| same greedy tokens as Keras |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for batch in map(str, BATCHES):
        reference = keras[batch]
        rows = [("Keras `generate` (XLA)", reference)] + [
            (f"SavedModel, {'`--xla`' if name == 'xla' else 'default (no XLA)'}", timings[name][batch])
            for name in timings]
        for label, timing in rows:
            rate = timing["tokens"] / timing["seconds"]
            same = "yes" if timing["token_ids"] == reference["token_ids"] else "no"
            lines.append(f"| {label} | {batch} | {timing['first'] * 1000:.0f} | {timing['seconds']:.2f} | {rate:.1f} | "
                         f"{rate / (reference['tokens'] / reference['seconds']):.2f} | {same} |")
    return lines, exports


def memory_table(workdir, checkpoint):
    """Peak RSS of bfloat16 exports at four shapes, after each stage, and a fit in weight bytes and layers."""
    cases = [("tiny fixture (2 layers, vocab 1000)", str(ROOT / "tests" / "fixtures" / "tiny_window"),
              str(ROOT / "tests" / "fixtures" / "tiny_tokenizer"), 512),
             ("175M benchmark model (8 layers)", checkpoint, None, MAX_LENGTH)]
    for label, config in RAM_MODELS.items():
        folder = os.path.join(workdir, "checkpoint_" + label.split()[0] + "_bf16")
        if not os.path.isfile(os.path.join(folder, "config.json")):
            _run_in_child(_make_checkpoint_child, folder, config)
        cases.append((label, folder, None, MAX_LENGTH))
    rows, lines = [], [
        "| model | bf16 weights GB | layers | peak RSS GB after loading | after tracing "
        "| after writing (export peak) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, folder, tokenizer, max_length in cases:
        output = os.path.join(workdir, "ram", label.split()[0])
        result = _run_in_child(_export_child, folder, output, "bfloat16", False, tokenizer, max_length)
        with open(os.path.join(folder, "config.json")) as file:
            config = json.load(file)
        weights = _weight_bytes({k: v for k, v in config.items() if k in MODEL}, 2) / 1e9
        # GB at the start of tracing, writing, publishing
        peaks = [rss * 2**30 / 1e9 for _, _, rss in result["stages"][1:4]]
        rows.append((weights, config["num_hidden_layers"], peaks[-1]))
        lines.append(f"| {label} | {weights:.3f} | {config['num_hidden_layers']} | "
                     + " | ".join(f"{p:.2f}" for p in peaks) + " |")
        print(label, weights, peaks, flush=True)
    design = np.array([[1.0, weights, layers] for weights, layers, _ in rows])
    (base, per_gb, per_layer), *_ = np.linalg.lstsq(design, np.array([peak for *_, peak in rows]), rcond=None)
    seven_b = _weight_bytes(SEVEN_B, 2) / 1e9
    estimate = base + per_gb * seven_b + per_layer * SEVEN_B["num_hidden_layers"]
    lines += ["", f"Least-squares fit: peak RSS = {base:.2f} GB + {per_gb:.2f} x bf16 weight GB "
                  f"+ {per_layer:.3f} GB x layers. "
                  f"For Mistral-7B in bfloat16 ({seven_b:.1f} GB of weights, 32 layers): about **{estimate:.0f} GB**."]
    return lines


def _make_checkpoint_child(folder, config, queue):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tflite

    tflite.MODEL = config  # make_checkpoint builds the shape in tflite.MODEL
    tflite.make_checkpoint(folder)
    queue.put("{}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/tf_mistral_serving_bench")
    parser.add_argument("--skip-memory", action="store_true", help="only the speed table")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    checkpoint = os.path.join(args.workdir, "checkpoint_175m_bf16")
    make_checkpoint(checkpoint)

    speed, exports = speed_table(args.workdir, checkpoint)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        "one timed run each. Command:",
        "",
        f"    {COMMAND}",
        "",
        "175M benchmark model (hidden 1024, 8 layers, 16 heads / 4 kv heads, intermediate 3584, vocab 32000, "
        "window 256), random weights, float32; real Mistral tokenizer; prompts of 18-21 tokens; greedy; "
        f"max_length {MAX_LENGTH}. SavedModel requests go through `generate_text` (strings in and out) in a "
        "process that imports only tensorflow and tensorflow_text.",
        "",
        *speed,
        "",
        "Export (float32) peak RSS: "
        + ", ".join(f"{name} {e['peak_rss_gb']:.2f} GB" for name, e in exports.items()) + ".",
    ]
    if not args.skip_memory:
        lines += ["", "### RAM an export needs (bfloat16)", "", *memory_table(args.workdir, checkpoint)]
    _write_doc("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
