"""Peak RSS of one load in this fresh process (issue 14 items 2 and 4; docs/scale.md, "Memory of
the Keras and SavedModel paths").

    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/load_memory.py keras MODE [--decode N]
    flock /tmp/tf_mistral_bench.lock .venv/bin/python bench/load_memory.py saved-model MODE [PATH]

keras MODE: framework (TF and tf_mistral imported, one op), bf16, int8 (`from_pretrained(...,
quantize="int8")`) or bf16-then-quantize (Keras `quantize("int8")` after a bf16 load), of
--checkpoint (default the 8-layer scale checkpoint); `--decode N` then times N greedy tokens after
a random 32-token prompt. saved-model MODE: framework (TF and TF Text), graph
(`LoadOptions(experimental_skip_checkpoint=True)`: no weights) or full, of the SavedModel version
folder PATH. Peak RSS is `ru_maxrss` (KiB) in GB of 1e9 bytes; one line of figures is printed.
"""

import argparse
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
CHECKPOINT = "/tmp/tf_mistral_scale/checkpoint_8"


def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def keras(mode, checkpoint, decode):
    import numpy as np
    import tensorflow as tf

    import tf_mistral

    tf.constant(1.0) + 1.0
    if mode == "framework":
        return f"keras framework: peak {peak_gb():.2f} GB"
    started = time.perf_counter()
    quantize = "int8" if mode == "int8" else None
    model = tf_mistral.TFMistralForCausalLM.from_pretrained(checkpoint, dtype="bfloat16", quantize=quantize,
                                                            progress=False)
    if mode == "bf16-then-quantize":
        model.quantize("int8")
    load = time.perf_counter() - started
    variables = sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in model.weights) / 1e9
    line = f"keras {mode}: load {load:.1f} s, variables {variables:.2f} GB, peak {peak_gb():.2f} GB"
    if decode:
        ids = np.random.default_rng(1).integers(3, model.config.vocab_size, (1, 32)).astype(np.int32)

        def timed(new_tokens):
            started = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], pad_token_id=0)
            return time.perf_counter() - started, out[0, 32:].tolist()

        timed(1)
        first, _ = timed(1)
        timed(1 + decode)  # traces the decode loop
        seconds, tokens = timed(1 + decode)
        line += (f"; first token {first:.2f} s, decode {decode / (seconds - first):.3f} tokens/s, tokens {tokens}, "
                 f"peak after {peak_gb():.2f} GB")
    return line


def saved_model(mode, path):
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer ops, as TF Serving has them)

    tf.constant(1.0) + 1.0
    if mode == "framework":
        return f"saved-model framework: peak {peak_gb():.2f} GB"
    options = tf.saved_model.LoadOptions(experimental_skip_checkpoint=mode == "graph")
    started = time.perf_counter()
    tf.saved_model.load(path, options=options)
    load = time.perf_counter() - started
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    dtypes = reader.get_variable_to_dtype_map()
    variables = sum(
        int(np.prod(shape)) * dtypes[name].size for name, shape in reader.get_variable_to_shape_map().items()
    )
    return f"saved-model {mode}: load {load:.1f} s, variables {variables / 1e9:.2f} GB, peak {peak_gb():.2f} GB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", choices=["keras", "saved-model"])
    parser.add_argument("mode")
    parser.add_argument("folder", nargs="?", help="saved-model: the version folder")
    parser.add_argument("--checkpoint", default=CHECKPOINT)
    parser.add_argument("--decode", type=int, default=0, help="keras: greedy tokens to time after loading")
    args = parser.parse_args()
    modes = {
        "keras": ("framework", "bf16", "int8", "bf16-then-quantize"), "saved-model": ("framework", "graph", "full")
    }
    if args.mode not in modes[args.path]:
        parser.error(f"{args.path} modes: {', '.join(modes[args.path])}")
    if args.path == "keras":
        print(keras(args.mode, args.checkpoint, args.decode))
    else:
        print(saved_model(args.mode, args.folder))


if __name__ == "__main__":
    main()
