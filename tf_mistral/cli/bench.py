"""`tf-mistral bench NAME [ARGS]`: runs bench/NAME.py of the source checkout under the benchmark
lock, so that two benchmarks never share the machine (no TensorFlow in this process)."""

import argparse
import fcntl
import os
import subprocess
import sys

BENCHES = ("generate", "tokenizer", "memory", "tflite", "serving", "train")
BENCH_LOCK = "/tmp/tf_mistral_bench.lock"
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=BENCHES, help="which benchmark: runs bench/NAME.py")
    p.add_argument("arguments", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="passed to the script (e.g. --help)")


def bench_script(name: str) -> str:
    """bench/NAME.py of the source checkout (the bench scripts are not installed with the package)."""
    folder = os.path.join(CHECKOUT, "bench")
    script = os.path.join(folder, f"{name}.py")
    if not os.path.isfile(script):
        present = (
            sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(folder) else "no bench/"
        )
        raise FileNotFoundError(
            f"{script} does not exist: the benchmarks live in the source checkout (git clone, then "
            f"`pip install -e .`); this checkout has {present}"
        )
    return script


def run(args: argparse.Namespace) -> None:
    script = bench_script(args.name)
    with open(BENCH_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another benchmark to finish ({BENCH_LOCK})", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        code = subprocess.call([sys.executable, script, *args.arguments])
    if code:
        raise SystemExit(code)
