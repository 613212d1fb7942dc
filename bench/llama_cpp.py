"""llama.cpp as a CPU reference peer: the same checkpoint as GGUF (Q8_0, Q4_0), timed by llama-bench.

    .venv/bin/python bench/llama_cpp.py --checkpoint /tmp/tf_mistral_scale/checkpoint_8            # 8 layers
    .venv/bin/python bench/llama_cpp.py --checkpoint /tmp/tf_mistral_scale/checkpoint_32 Q8_0 Q4_0  # the 7B

Steps, each skipped when its output is already in `--workdir` (default /tmp/tf_mistral_llama):
llama.cpp is built from the `llama-cpp-python` sdist on PyPI (it vendors llama.cpp; CMake,
Release, CPU only, -march=native, `llama-bench` and `llama-quantize` only; 10-20 min on 2 cores);
the checkpoint is converted to a bf16 GGUF by the tree's `convert_hf_to_gguf.py` (its own
`gguf-py`, nothing installed), from a folder of symlinks plus the Mistral v0.1 `tokenizer.model`
that ships in `mistral-common` when the checkpoint has none; `llama-quantize` makes each type and
the bf16 file is deleted afterwards (14.5 GB at 7B) unless `--keep-bf16`. Then `llama-bench`
runs prompts of 32 and 512 tokens and 16 decode steps (one repetition after a warm-up) while
holding the shared benchmark lock (don't wrap this script in `flock` too: it would wait on
itself). One JSON line per type is printed and appended to `results.jsonl` in the workdir; peak
RSS is llama-bench's own (`wait4`), mapped model pages included. `bench/scale.py run q8_0 q4_0`
runs the same steps (`measure`) beside the other paths, in its own session and results file.
"""

import argparse
import fcntl
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import mistral_common

LLAMA_CPP_PYTHON = "0.3.36"
TOKENIZER = pathlib.Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
LOCK = "/tmp/tf_mistral_bench.lock"
WORKDIR = pathlib.Path("/tmp/tf_mistral_llama")
TOOLS = ("llama-bench", "llama-quantize")


def run(command):
    """Runs `command` (a list) with its output on stderr, so stdout holds only result lines."""
    print("+", shlex.join(map(str, command)), file=sys.stderr, flush=True)
    subprocess.run(list(map(str, command)), check=True, stdout=sys.stderr)


def llama_cpp_source(workdir):
    """The vendored llama.cpp tree of the pinned llama-cpp-python sdist, downloaded on first use."""
    source = workdir / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if not source.is_dir():
        download = workdir / "src"
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", download])
        run(["tar", "xzf", download / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz", "-C", download])
    return source


def build_tools(workdir, source):
    """Builds llama-bench and llama-quantize (static, CPU only) under workdir/build; returns bin/."""
    build, binaries = workdir / "build", workdir / "build" / "bin"
    if all((binaries / tool).exists() for tool in TOOLS):
        return binaries
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get update && apt-get install -y cmake g++")
    started = time.perf_counter()
    run(["cmake", "-S", source, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
         "-DGGML_CUDA=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
         "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF"])
    run(["cmake", "--build", build, "--config", "Release", "-j2", "--target", *TOOLS])
    print(f"built {', '.join(TOOLS)} in {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)
    return binaries


def hf_folder(workdir, checkpoint):
    """The checkpoint itself if it has a tokenizer.model, else a folder of symlinks plus mistral-common's."""
    if (checkpoint / "tokenizer.model").exists():
        return checkpoint
    folder = workdir / f"hf_{checkpoint.name}"
    folder.mkdir(parents=True, exist_ok=True)
    for path in checkpoint.iterdir():
        if not os.path.lexists(folder / path.name):
            (folder / path.name).symlink_to(path.resolve())
    if not (folder / "tokenizer.model").exists():
        shutil.copyfile(TOKENIZER, folder / "tokenizer.model")
    return folder


def gguf_files(workdir, source, binaries, checkpoint, types, keep_bf16):
    """Converts to bf16 once and quantizes to each type, reusing what exists; returns {type: path}."""
    out = workdir / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    bf16 = out / f"{checkpoint.name}-bf16.gguf"
    paths = {t: out / f"{checkpoint.name}-{t.lower()}.gguf" for t in types}
    missing = [t for t, p in paths.items() if not p.exists()]
    if missing and not bf16.exists():
        run([sys.executable, source / "convert_hf_to_gguf.py", hf_folder(workdir, checkpoint), "--outtype",
             "bf16", "--outfile", bf16.with_suffix(".partial")])
        bf16.with_suffix(".partial").rename(bf16)
    for t in missing:
        run([binaries / "llama-quantize", bf16, paths[t].with_suffix(".partial"), t, "2"])
        paths[t].with_suffix(".partial").rename(paths[t])
    if bf16.exists() and not keep_bf16:
        bf16.unlink()
    return paths


def bench(binaries, path, threads, lock=True):
    """llama-bench, under the shared lock unless the caller holds it (`lock=False`): its JSON rows,
    peak RSS in GB, the 1-min load average before it (other work on the 2 cores skews the figures)
    and the command."""
    command = [str(binaries / "llama-bench"), "-m", str(path), "-t", str(threads), "-p", "32,512",
               "-n", "16", "-r", "1", "-o", "json"]
    with open(LOCK, "a") as lock_file:
        if lock:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        load_average = os.getloadavg()[0]
        print("+", shlex.join(command), file=sys.stderr, flush=True)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        with process.stdout:
            output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return json.loads(output), usage.ru_maxrss / 1e6, load_average, shlex.join(command)


def summary(quantize, path, rows, peak_rss_gb, load_average, command):
    """One result line from llama-bench's rows (pp32, pp512, tg16)."""
    speed = {(r["n_prompt"], r["n_gen"]): r["avg_ts"] for r in rows}
    return dict(kind="llama.cpp", type=quantize, threads=rows[0]["n_threads"], file_bytes=path.stat().st_size,
                prefill_32_tokens_per_second=speed[32, 0], prefill_512_tokens_per_second=speed[512, 0],
                decode_tokens_per_second=speed[0, 16], first_token_512_seconds=512 / speed[512, 0],
                peak_rss_gb=peak_rss_gb, load_average=load_average, build_commit=rows[0]["build_commit"],
                command=command, date=time.strftime("%Y-%m-%d"))


def measure(checkpoint, types, workdir=WORKDIR, threads=2, keep_bf16=False, lock=True):
    """Builds llama.cpp and the GGUF files of `checkpoint` that are missing, then yields one result
    row per llama-quantize type. `lock=False`: the caller holds the benchmark lock (bench/scale.py)."""
    workdir, checkpoint = pathlib.Path(workdir).resolve(), pathlib.Path(checkpoint).resolve()
    source = llama_cpp_source(workdir)
    binaries = build_tools(workdir, source)
    paths = gguf_files(workdir, source, binaries, checkpoint, types, keep_bf16)
    for quantize, path in paths.items():
        row = summary(quantize, path, *bench(binaries, path, threads, lock))
        row.update(checkpoint=str(checkpoint))
        yield row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("types", nargs="*", default=["Q8_0", "Q4_0"], help="llama-quantize types")
    parser.add_argument("--checkpoint", required=True, type=pathlib.Path, help="a Hugging Face Mistral folder")
    parser.add_argument("--workdir", default=WORKDIR, type=pathlib.Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep-bf16", action="store_true", help="keep the bf16 GGUF after quantizing")
    args = parser.parse_args()
    session = time.strftime("%Y-%m-%d %H:%M")
    for row in measure(args.checkpoint, args.types, args.workdir, args.threads, args.keep_bf16):
        row.update(session=session)
        print(json.dumps(row), flush=True)
        with open(args.workdir / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
