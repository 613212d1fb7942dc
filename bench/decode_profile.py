"""Where a 7B decode step's time goes on this CPU: the projections of Mistral-7B's decoder layers
(q, k, v, o, gate, up, down; hidden 4096, 8 kv heads of 128, intermediate 14336) applied to one
row, as a decode step applies them, through each kernel a runtime could use, and how many bytes of
weights each reads per second.

    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/decode_profile.py    # about 3 min

`LAYERS` distinct layers of random weights (3: 0.65 B parameters, 1.3 GB in bf16, far past the
caches) are applied in one call; the best of 4 calls is kept and scaled to the 32 layers of 7B
(the `s per token` column: the projections alone, the floor of a decode step). Paths:
- TF graph / XLA `tf.matmul` on bf16 weights (what Keras `generate` runs in bf16: a TF graph);
- XLA on bf16 weights cast to float32 first, Keras' `[in, out]` and `[out, in]`;
- TF graph / XLA on float32 weights, `[in, out]` and `[out, in]` (what the kernels read when the
  weights need no conversion; a 7B model in float32, 29 GB, does not fit in this machine's memory);
- PyTorch `F.linear` on bf16 and float32 weights `[out, in]` (what HF transformers runs);
- the conversion alone: bf16 -> float32 of 1.1 GB under XLA, written into a float32 variable.
Writes the table into docs/scale.md between the decode-profile markers.
"""

import os
import platform
import time

import numpy as np
import tensorflow as tf
import torch

from doc_section import publish

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "docs", "scale.md")
BEGIN, END = "<!-- decode-profile:begin -->", "<!-- decode-profile:end -->"
COMMAND = "flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/decode_profile.py"
LAYERS = 3
LAYER = [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096), (4096, 14336), (4096, 14336), (14336, 4096)]
SHAPES = LAYER * LAYERS  # (in, out) of each projection
PARAMETERS = sum(a * b for a, b in SHAPES)
CALLS = 4


def best_seconds(run):
    """The fastest of CALLS calls of `run()` after one warm-up call (tracing, compiling)."""
    run()
    best = float("inf")
    for _ in range(CALLS):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def widened(x, fan_in):
    """The row `x [1, 4096]` cut or tiled to `fan_in` columns."""
    return x[:, :fan_in] if fan_in <= x.shape[1] else tf.tile(x, [1, 4])[:, :fan_in]


def tensorflow_seconds(dtype, transposed, xla, cast):
    """One call of the projections in TensorFlow: weights in `dtype`, `[out, in]` when `transposed`,
    cast to float32 first when `cast`; every output element is summed (so nothing is dropped)."""
    rng = np.random.default_rng(0)
    kernels = [
        tf.Variable(tf.cast(rng.standard_normal((b, a) if transposed else (a, b), dtype=np.float32) * 0.02, dtype))
        for a, b in SHAPES
    ]
    x = tf.constant(rng.standard_normal((1, 4096)).astype(np.float32) * 0.1, tf.float32 if cast else dtype)

    def projections(x):
        total = tf.zeros((), tf.float32)
        for kernel in kernels:
            weights = tf.cast(kernel, tf.float32) if cast else kernel
            inputs = widened(x, kernel.shape[1] if transposed else kernel.shape[0])
            total += tf.reduce_sum(tf.cast(tf.matmul(inputs, weights, transpose_b=transposed), tf.float32))
        return total

    function = tf.function(projections, jit_compile=xla)
    return best_seconds(lambda: function(x).numpy())


def torch_seconds(dtype):
    """One call of the projections with `torch.nn.functional.linear` (weights `[out, in]`)."""
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    weights = [(torch.randn(b, a, generator=generator) * 0.02).to(dtype) for a, b in SHAPES]
    x = (torch.randn(1, 4096, generator=generator) * 0.1).to(dtype)

    def projections():
        total = 0.0
        with torch.no_grad():
            for weight in weights:
                fan_in = weight.shape[1]
                inputs = x[:, :fan_in] if fan_in <= 4096 else x.repeat(1, 4)[:, :fan_in]
                total += float(torch.nn.functional.linear(inputs, weight).float().sum())
        return total

    return best_seconds(projections)


def conversion_rate():
    """bf16 -> float32 elements per second under XLA, into an existing float32 variable."""
    shape = (256 * 1024 * 1024 // 4096 * 2, 4096)  # 1 GiB of bf16
    source = tf.Variable(tf.cast(tf.random.normal(shape) * 0.02, tf.bfloat16))
    target = tf.Variable(tf.zeros(shape, tf.float32))
    convert = tf.function(lambda: target.assign(tf.cast(source, tf.float32)).read_value()[0, 0], jit_compile=True)
    return shape[0] * shape[1] / best_seconds(lambda: convert().numpy())


def main():
    paths = [
        ("TF graph, bf16 weights `[in, out]` (Keras bf16 `generate`)", "bf16", lambda: tensorflow_seconds(
            tf.bfloat16, False, False, False)),
        ("XLA, bf16 weights `[in, out]`", "bf16", lambda: tensorflow_seconds(tf.bfloat16, False, True, False)),
        ("XLA, bf16 weights cast to float32, `[in, out]`", "bf16", lambda: tensorflow_seconds(
            tf.bfloat16, False, True, True)),
        ("XLA, bf16 weights cast to float32, `[out, in]`", "bf16", lambda: tensorflow_seconds(
            tf.bfloat16, True, True, True)),
        ("TF graph, float32 weights `[in, out]`", "f32", lambda: tensorflow_seconds(tf.float32, False, False, False)),
        ("TF graph, float32 weights `[out, in]`", "f32", lambda: tensorflow_seconds(tf.float32, True, False, False)),
        ("XLA, float32 weights `[in, out]`", "f32", lambda: tensorflow_seconds(tf.float32, False, True, False)),
        ("XLA, float32 weights `[out, in]`", "f32", lambda: tensorflow_seconds(tf.float32, True, True, False)),
        ("PyTorch `F.linear`, bf16 weights (HF transformers)", "bf16", lambda: torch_seconds(torch.bfloat16)),
        ("PyTorch `F.linear`, float32 weights", "f32", lambda: torch_seconds(torch.float32)),
    ]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; TensorFlow {tf.__version__}, PyTorch "
        f"{torch.__version__}. {LAYERS} layers of 7B projections ({PARAMETERS / 1e9:.2f} B parameters), one row, "
        f"best of {CALLS} calls.",
        "",
        "| kernel | ms per call | GB/s of weights | s per token, 32 layers |",
        "| --- | --- | --- | --- |",
    ]
    for name, dtype, run in paths:
        seconds = run()
        nbytes = PARAMETERS * (2 if dtype == "bf16" else 4)
        lines.append(f"| {name} | {seconds * 1e3:.0f} | {nbytes / seconds / 1e9:.1f} | {seconds * 32 / LAYERS:.2f} |")
        print(lines[-1], flush=True)
    rate = conversion_rate()
    lines += ["", f"bf16 -> float32 under XLA into a float32 variable: {rate / 1e9:.2f} G elements/s "
                  f"({2 * rate / 1e9:.1f} GB/s read, {4 * rate / 1e9:.1f} GB/s written).", "",
              f"Command: `{COMMAND}`"]
    publish(DOC, BEGIN, END, "\n".join(lines), heading="### Decode profile: the projections' kernels\n\n")


if __name__ == "__main__":
    main()
