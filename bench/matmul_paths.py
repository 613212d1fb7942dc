"""Which CPU path runs the 175M model's matmuls fastest: XLA or a TensorFlow graph (oneDNN),
float32 or bfloat16, Keras' `[in, out]` kernels or `[out, in]`; the measurements behind the choices
in `generate` (prefill as a TF graph, decode under XLA).

    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/matmul_paths.py    # about 3 min

The chain is the 56 projection matrices of the benchmark model (8 layers of q, k, v, o, gate, up,
down; hidden 1024, intermediate 3584, 4 kv heads of 64), random weights in `tf.Variable`s, applied
to `rows` activations (1 or 8: a decode step at batch 1 or 8; 64, 512, 2048: a prefill). Two tables:
- one pass of the chain in one call, best of 6 calls (`ms`), and its rate in GFLOP/s;
- the chain inside an XLA `while_loop` (as the decode loop runs it): ms per step by the difference
  of 17 and 1 iterations, and the fixed cost of a call. `[out, in]` transposes the kernels once per
  call before the loop (what storing them that way would save per step, and what transposing at
  every call costs).
Writes both into docs/benchmarks.md between the matmul-paths markers.
"""

import os
import platform
import sys
import time

import numpy as np
import tensorflow as tf

from doc_section import publish

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "docs", "benchmarks.md")
BEGIN, END = "<!-- matmul-paths:begin -->", "<!-- matmul-paths:end -->"
COMMAND = "flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/matmul_paths.py"
LAYER = [(1024, 1024), (1024, 256), (1024, 256), (1024, 1024), (1024, 3584), (1024, 3584), (3584, 1024)]
SHAPES = LAYER * 8
FLOPS_PER_ROW = 2 * sum(a * b for a, b in SHAPES)


def weights(dtype):
    rng = np.random.default_rng(0)
    return [tf.Variable(tf.cast(rng.standard_normal(s, dtype=np.float32) * 0.02, dtype)) for s in SHAPES]


def apply_chain(x, kernels, transposed):
    """Every kernel applied to (a widening of) `x`; a scalar of each output keeps it alive."""
    total = tf.zeros((), tf.float32)
    for kernel in kernels:
        fan_in = kernel.shape[1] if transposed else kernel.shape[0]
        inputs = x if fan_in == x.shape[1] else tf.tile(x, [1, 4])[:, :fan_in]
        total += tf.reduce_sum(tf.cast(tf.matmul(inputs, kernel, transpose_b=transposed)[:, :1], tf.float32))
    return total


def best_seconds(function, *args, calls=6):
    function(*args).numpy()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        function(*args).numpy()
        best = min(best, time.perf_counter() - start)
    return best


def one_pass_table(rows_list):
    lines = ["| dtype | rows | XLA ms | TF graph ms | XLA GFLOP/s | TF graph GFLOP/s | faster |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for dtype in ("float32", "bfloat16"):
        kernels = weights(dtype)
        paths = {jit: tf.function(lambda x: apply_chain(x, kernels, False), jit_compile=jit) for jit in (True, False)}
        for rows in rows_list:
            x = tf.cast(tf.random.normal([rows, 1024]), dtype)
            xla, graph = (best_seconds(paths[jit], x) for jit in (True, False))
            flops = FLOPS_PER_ROW * rows / 1e9
            faster = f"TF graph {xla / graph:.2f}x" if graph < xla else f"XLA {graph / xla:.2f}x"
            lines.append(f"| {dtype} | {rows} | {xla * 1e3:.1f} | {graph * 1e3:.1f} | {flops / xla:.0f} | "
                         f"{flops / graph:.0f} | {faster} |")
            print(lines[-1], flush=True)
    return lines


def loop_table(rows_list):
    lines = ["| dtype | rows | `[in, out]` ms/step | `[out, in]` ms/step | `[in, out]` fixed ms "
             "| `[out, in]` fixed ms (transposes) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for dtype in ("float32", "bfloat16"):
        kernels = weights(dtype)

        def looped(transposed):
            @tf.function(jit_compile=True)
            def run(x, steps):
                used = [tf.transpose(k) for k in kernels] if transposed else [k for k in kernels]

                def body(i, x):
                    return i + 1, x + tf.cast(apply_chain(x, used, transposed) * 1e-9, x.dtype)

                return tf.while_loop(lambda i, x: i < steps, body, (0, x))[1]
            return run

        for rows in rows_list:
            x = tf.cast(tf.random.normal([rows, 1024]), dtype)
            cells = {}
            for transposed in (False, True):
                run = looped(transposed)
                one, many = (best_seconds(run, x, tf.constant(n), calls=4) for n in (1, 17))
                cells[transposed] = ((many - one) / 16 * 1e3, one * 1e3)
            lines.append(f"| {dtype} | {rows} | {cells[False][0]:.1f} | {cells[True][0]:.1f} | "
                         f"{cells[False][1]:.1f} | {cells[True][1]:.1f} |")
            print(lines[-1], flush=True)
    return lines


def main():
    quick = "--quick" in sys.argv
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores; TensorFlow {tf.__version__}.", "",
             "One pass of the chain:", ""]
    lines += one_pass_table([1, 64] if quick else [1, 8, 64, 512, 2048])
    lines += ["", "The chain in an XLA `while_loop`:", ""]
    lines += loop_table([1] if quick else [1, 8])
    lines += ["", f"Command: `{COMMAND}{' --quick' if quick else ''}`"]
    publish(DOC, BEGIN, END, "\n".join(lines), heading="### Matmul paths\n\n")


if __name__ == "__main__":
    main()
