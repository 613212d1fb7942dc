"""Correctness of Bf16MatMul against tf.matmul(x, tf.cast(w, tf.float32)).

Errors are reported norm-wise: max|y - ref| / max|ref|.  A float64 numpy
reference is also computed so that our error and tf.matmul's own float32
error can be compared on the same footing.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
ops = tf.load_op_library(os.path.join(HERE, "bf16_matmul.so"))

TOL = 2e-5  # float32 accumulation-order noise for in <= 14336


def rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def make(rows, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    w = tf.cast(tf.constant(rng.standard_normal((n_in, n_out)).astype(np.float32) * 0.02),
                tf.bfloat16)
    return tf.constant(x), w


def check_eager():
    worst = 0.0
    ok = True
    print(f"{'rows':>4} {'in':>6} {'out':>6}  {'ours-vs-tf':>11} "
          f"{'ours-vs-f64':>11} {'tf-vs-f64':>10}")
    shapes = [(4096, 4096), (4096, 1024), (14336, 4096), (4096, 14336), (5, 13)]
    for n_in, n_out in shapes:
        for rows in (1, 3, 8, 16):
            x, w = make(rows, n_in, n_out, seed=rows * 7 + n_in + n_out)
            y = ops.bf16_mat_mul(x, w).numpy()
            ref = tf.matmul(x, tf.cast(w, tf.float32)).numpy()
            exact = x.numpy().astype(np.float64) @ tf.cast(w, tf.float64).numpy()
            e_tf, e_64, e_ref = rel_err(y, ref), rel_err(y, exact), rel_err(ref, exact)
            assert y.shape == (rows, n_out) and y.dtype == np.float32
            good = e_tf < TOL
            ok &= good
            worst = max(worst, e_tf)
            print(f"{rows:>4} {n_in:>6} {n_out:>6}  {e_tf:11.2e} {e_64:11.2e} "
                  f"{e_ref:10.2e} {'ok' if good else 'FAIL'}")
    print(f"worst ours-vs-tf.matmul: {worst:.2e} (tolerance {TOL:.0e})")
    return ok


def check_odd_shapes():
    """Extra edge cases: tails in every loop, >16 rows, 3-D x."""
    ok = True
    cases = [(1, 7, 3), (2, 9, 8), (4, 4097, 100), (17, 130, 1000), (33, 64, 4100),
             (1, 1, 1), (6, 4099, 4161)]
    for rows, n_in, n_out in cases:
        x, w = make(rows, n_in, n_out, seed=rows + n_in + n_out)
        e = rel_err(ops.bf16_mat_mul(x, w), tf.matmul(x, tf.cast(w, tf.float32)))
        good = e < TOL
        ok &= good
        print(f"odd shape rows={rows:<3} in={n_in:<5} out={n_out:<5} err={e:.2e} "
              f"{'ok' if good else 'FAIL'}")
    x, w = make(6, 256, 40, seed=1)
    x3 = tf.reshape(x, (2, 3, 256))
    y3 = ops.bf16_mat_mul(x3, w)
    e = rel_err(y3, tf.reshape(tf.matmul(x, tf.cast(w, tf.float32)), (2, 3, 40)))
    good = y3.shape == (2, 3, 40) and e < TOL
    ok &= good
    print(f"3-D x [2,3,256] -> {tuple(y3.shape)} err={e:.2e} {'ok' if good else 'FAIL'}")
    # Empty reduction and empty batch.
    y0 = ops.bf16_mat_mul(tf.zeros((2, 0)), tf.zeros((0, 5), tf.bfloat16))
    y1 = ops.bf16_mat_mul(tf.zeros((0, 4)), tf.zeros((4, 5), tf.bfloat16))
    good = y0.shape == (2, 5) and not np.any(y0.numpy()) and y1.shape == (0, 5)
    ok &= good
    print(f"empty in / empty rows: {'ok' if good else 'FAIL'}")
    # Shape mismatch must raise.
    try:
        ops.bf16_mat_mul(tf.zeros((2, 3)), tf.zeros((4, 5), tf.bfloat16))
        print("mismatch did not raise: FAIL")
        ok = False
    except (tf.errors.InvalidArgumentError, ValueError):
        print("in-dim mismatch raises: ok")
    return ok


def check_graph_mode():
    ok = True
    n_in, n_out = 4096, 1024
    _, w0 = make(1, n_in, n_out, seed=3)
    w = tf.Variable(w0)

    @tf.function(jit_compile=False,
                 input_signature=[tf.TensorSpec([None, n_in], tf.float32)])
    def f(x):
        y = ops.bf16_mat_mul(x, w)
        # Static shape inference: rows unknown, out known.
        assert y.shape.as_list() == [None, n_out], y.shape
        return y

    for rows in (1, 8):
        x, _ = make(rows, n_in, n_out, seed=rows)
        e = rel_err(f(x), tf.matmul(x, tf.cast(w, tf.float32)))
        good = e < TOL
        ok &= good
        print(f"tf.function (graph, no XLA) rows={rows}: err={e:.2e} {'ok' if good else 'FAIL'}")
    graph = f.get_concrete_function().graph
    types = {op.type for op in graph.get_operations()}
    good = "Bf16MatMul" in types
    ok &= good
    print(f"graph contains Bf16MatMul op: {'ok' if good else 'FAIL'}")

    @tf.function(jit_compile=False)
    def g(x):  # fully static shapes
        return ops.bf16_mat_mul(x, w)

    x, _ = make(3, n_in, n_out, seed=9)
    shape = g.get_concrete_function(x).structured_outputs.shape.as_list()
    good = shape == [3, n_out]
    ok &= good
    print(f"static shape inference [3,{n_in}]x[{n_in},{n_out}] -> {shape} "
          f"{'ok' if good else 'FAIL'}")
    return ok


if __name__ == "__main__":
    print("TF", tf.__version__, "| intra-op threads:",
          tf.config.threading.get_intra_op_parallelism_threads() or "default")
    results = [check_eager(), check_odd_shapes(), check_graph_mode()]
    print("ALL OK" if all(results) else "SOME CHECKS FAILED")
    sys.exit(0 if all(results) else 1)
