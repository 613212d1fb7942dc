"""Decode-step speed of Bf16MatMul vs tf.matmul on bf16 weights.

The 7 projections of N Mistral-7B decoder layers, distinct random bf16
weights in tf.Variables, applied to 1 and to 8 rows inside a tf.function
(no XLA).  The projections are chained (each waits for the previous one),
as in a real decoder, so no two matmuls run at the same time.

Run ONLY under the benchmark lock:
    flock /tmp/tf_mistral_bench.lock ../../.venv/bin/python speed.py   (from bench/bf16_matmul_op, after ./build.sh)
"""
import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
ops = tf.load_op_library(os.path.join(HERE, "bf16_matmul.so"))

HIDDEN, KV, FFN = 4096, 1024, 14336
# (name, in, out) of one Mistral-7B decoder layer, in execution order.
PROJECTIONS = [("q", HIDDEN, HIDDEN), ("k", HIDDEN, KV), ("v", HIDDEN, KV),
               ("o", HIDDEN, HIDDEN), ("gate", HIDDEN, FFN), ("up", HIDDEN, FFN),
               ("down", FFN, HIDDEN)]


def make_weights(n_layers):
    layers = []
    for index in range(n_layers):
        layer = {}
        for j, (name, n_in, n_out) in enumerate(PROJECTIONS):
            # std 1/sqrt(in) keeps activations ~N(0, 1): no denormals/overflow.
            w = tf.random.stateless_normal((n_in, n_out), seed=(index, j),
                                           stddev=n_in ** -0.5)
            layer[name] = tf.Variable(tf.cast(w, tf.bfloat16), name=f"{name}{index}")
        layers.append(layer)
    return layers


def weight_bytes(layers):
    return sum(int(v.shape.num_elements()) * 2 for layer in layers for v in layer.values())


def ours(x, w):
    return ops.bf16_mat_mul(x, w)


def tf_bf16(x, w):
    return tf.cast(tf.matmul(tf.cast(x, tf.bfloat16), w), tf.float32)


def build(matmul, layers):
    """Chained decoder-layer projections; control deps serialise the matmuls."""

    @tf.function(jit_compile=False)
    def step(h):
        prev = h
        for layer in layers:
            outs = {}
            src = {"q": h, "k": h, "v": h}
            for name, _, _ in PROJECTIONS:
                if name == "o":
                    inp = outs["q"]
                elif name in ("gate", "up"):
                    inp = outs["o"]
                elif name == "down":
                    inp = outs["gate"] * outs["up"]
                else:
                    inp = src[name]
                with tf.control_dependencies([prev]):
                    outs[name] = matmul(inp, layer[name])
                prev = outs[name]
            h = outs["down"]
        return h

    return step


def bench(step, x, calls=4):
    step(x).numpy()  # warm-up (trace + first run)
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        step(x).numpy()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--skip-tf", action="store_true", help="only time Bf16MatMul")
    args = ap.parse_args()

    layers = make_weights(args.layers)
    nbytes = weight_bytes(layers)
    print(f"TF {tf.__version__}; {args.layers} layers, {nbytes / 1e9:.3f} GB bf16 weights; "
          f"best of {args.calls} calls after warm-up; s/token scaled to 32 layers")
    impls = [("Bf16MatMul (ours)", ours)]
    if not args.skip_tf:
        impls.append(("tf.matmul bf16", tf_bf16))
    print(f"{'impl':<20} {'rows':>4} {'ms':>9} {'GB/s':>7} {'s/token@32L':>12}")
    for rows in args.rows:
        x = tf.random.stateless_normal((rows, HIDDEN), seed=(99, rows))
        for label, mm in impls:
            t = bench(build(mm, layers), x, args.calls)
            print(f"{label:<20} {rows:>4} {t * 1e3:9.1f} {nbytes / t / 1e9:7.2f} "
                  f"{t * 32 / args.layers:12.3f}", flush=True)


if __name__ == "__main__":
    main()
