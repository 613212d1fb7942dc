"""`tf-mistral demo`, the main job: every part of tf_mistral on one small model, in a few minutes.

1. a model: a small Mistral (hidden 256, 4 layers, 8 heads, 2 KV heads, sliding window 64,
   19.4M parameters) with the real Mistral v0.1 tokenizer (32000 pieces), or real weights
   (`checkpoint=`);
2. fine-tuning with Keras `fit` on a short public-domain text (the opening of Alice's Adventures in
   Wonderland, bundled in tf_mistral/data/): the whole small model, or LoRA on real weights;
3. generation, streamed: the greedy continuation of the text's first words reproduces the text;
4. `save_pretrained` (HF safetensors + tokenizer.model);
5. a TF Serving SavedModel and a TFLite file (int8 by default) exported from that checkpoint;
6. the same prompt through the SavedModel and the LiteRT interpreter, shown beside Keras' output.

Files go to `runs/demo/` (checkpoint/, serving/mistral/1/, mistral_int8.tflite).
"""

from collections.abc import Callable, Sequence
import contextlib
import importlib.resources
import os
import sys
import time
from typing import Any
import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_mistral import MistralConfig, TFMistralForCausalLM, backends
from tf_mistral.export.saved_model import export_saved_model
from tf_mistral.export.tflite import export_tflite
from tf_mistral.generation.generate import decodes_under_xla
from tf_mistral.silence import silenced_stderr
from tf_mistral.tflite_runner import TFLiteRunner
from tf_mistral.tokenizer import MistralTokenizer, load_tokenizer

DEFAULT_OUTPUT = os.path.join("runs", "demo")
DEFAULT_STEPS = 120
DEFAULT_NEW_TOKENS = 64
PROMPT_WORDS = 6
TEXT_RESOURCE = "alice.txt"
# The built-in small model: trains to reproduce the text in ~2 minutes on 2 CPU cores.
SMALL_MODEL = dict(
    vocab_size=32000, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, sliding_window=64, rms_norm_eps=1e-5,
    rope_theta=10000.0, tie_word_embeddings=False,
)
WINDOW_LENGTH = 128  # training rows: windows of the text this long ...
WINDOW_STRIDE = 4  # ... starting every 4 tokens
BATCH_SIZE = 8
STEPS_PER_EPOCH = 20  # Keras reports once per epoch: a line every 20 steps shows the loss falling
LORA_RANK = 8
SAVED_MODEL_MAX_LENGTH = 1024
TFLITE_CACHE_LENGTH = 1024


class Steps:
    """Prints numbered step headers, and the time each step took."""

    def __init__(self, total: int) -> None:
        self.total, self.number, self.started = total, 0, time.perf_counter()
        self.step_started = None

    def __call__(self, title):
        self.done()
        self.number += 1
        self.step_started = time.perf_counter()
        print(f"\n[{self.number}/{self.total}] {title}", flush=True)

    def done(self) -> None:
        if self.step_started is not None:
            print(f"    ({time.perf_counter() - self.step_started:.0f} s)", flush=True)
            self.step_started = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def bundled_text() -> str:
    """The bundled training text (public domain: Lewis Carroll, 1865)."""
    return (importlib.resources.files("tf_mistral") / "data" / TEXT_RESOURCE).read_text(encoding="utf-8")


def default_prompt(text: str) -> str:
    """The text's first words."""
    return " ".join(text.split()[:PROMPT_WORDS])


def training_rows(
    ids: Sequence[int] | np.ndarray, length: int = WINDOW_LENGTH, stride: int = WINDOW_STRIDE
) -> np.ndarray:
    """int32 `[rows, length]`: windows of the token stream `ids` (the last one ends at its end)."""
    ids = np.asarray(ids, np.int32)
    length = min(length, len(ids))
    starts = list(range(0, len(ids) - length + 1, stride))
    if starts[-1] != len(ids) - length:
        starts.append(len(ids) - length)
    return np.stack([ids[start:start + length] for start in starts])


def build_small_model() -> TFMistralForCausalLM:
    model = TFMistralForCausalLM(MistralConfig(**SMALL_MODEL), dtype="float32")
    model.build()
    return model


def fine_tune(
    model: TFMistralForCausalLM, ids: Sequence[int], steps: int, learning_rate: float, lora: bool
) -> dict[str, float]:
    """Keras `fit` for `steps` batches of windows of `ids` (the whole model, or LoRA adapters)."""
    rows = training_rows(ids)
    dataset = (
        tf.data.Dataset.from_tensor_slices({"input_ids": rows})
        .shuffle(len(rows), seed=0).repeat().batch(BATCH_SIZE, drop_remainder=True)
    )
    if lora:
        model.enable_lora(LORA_RANK)
    # XLA (jit_compile) trains this small model slower on CPU than TF's graph, and compiles first.
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=0.0), jit_compile=False)
    print(f"    {len(rows)} windows of {rows.shape[1]} tokens, batches of {BATCH_SIZE}, "
          f"{steps} steps, AdamW lr {learning_rate:g}{f', LoRA rank {LORA_RANK}' if lora else ''}", flush=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*shuffle.*")  # Keras: the dataset shuffles itself
        # Keras' progress bar on a terminal; one line at the end in a log file.
        epochs = max(1, steps // STEPS_PER_EPOCH)
        history = model.fit(dataset, steps_per_epoch=-(-steps // epochs), epochs=epochs,
                            verbose=1 if sys.stdout.isatty() else 2)
    return {name: values[-1] for name, values in history.history.items()}


def matching_prefix(generated: Sequence[int], reference: Sequence[int]) -> int:
    """How many leading tokens of `generated` equal `reference`'s."""
    count = 0
    for a, b in zip(generated, reference):
        if a != b:
            break
        count += 1
    return count


def run_backend(
    name: str, run: Callable[..., backends.Result], runtime: Any, tokenizer: MistralTokenizer, ids: list[int],
    sampling: dict[str, Any], quiet: bool = False,
) -> backends.Result:
    """Runs one backend, printing its text as it streams; returns its `backends.Result`.
    `quiet`: silence C++ lines on stderr meanwhile (LiteRT's "Created XNNPACK delegate")."""
    print(f"    {name}: ", end="", flush=True)
    print(tokenizer.decode(ids, skip_special_tokens=True), end="", flush=True)
    with silenced_stderr() if quiet else contextlib.nullcontext():
        result = backends.print_generation(run, runtime, tokenizer, ids, **sampling)
    print(f"    [{result.summary()}]", flush=True)
    return result


def export_both(
    folder: str | os.PathLike, output: str | os.PathLike, config: MistralConfig, dtype: str, max_new_tokens: int,
    quantize: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SavedModel (`output/serving/mistral/1`) and the TFLite file (`output/mistral_Q.tflite`)
    of the checkpoint `folder`; returns the two exporters' results."""
    serving = export_saved_model(
        folder, os.path.join(output, "serving", "mistral"), version=1, overwrite=True,
        max_length=min(SAVED_MODEL_MAX_LENGTH, config.max_position_embeddings), max_new_tokens=max_new_tokens,
        dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "bfloat16",
    )
    tflite = export_tflite(
        folder, os.path.join(output, f"mistral_{quantize}.tflite"), quantize=quantize,
        cache_length=min(TFLITE_CACHE_LENGTH, config.max_position_embeddings),
    )
    return serving, tflite


def directory_size(path: str | os.PathLike) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def print_summary(
    results: dict[str, backends.Result], checkpoint: str, serving: str, tflite: str, prompt: str
) -> None:
    """The runtimes side by side, the files written, and the commands that run them again."""
    reference = next(iter(results.values())).new_ids  # the Keras model's
    print("\nsame prompt, three runtimes:")
    print(f"    {'runtime':<18}{'tokens':>7}{'tokens/s':>10}   same tokens as Keras")
    for name, result in results.items():
        same = matching_prefix(result.new_ids, reference)
        print(f"    {name:<18}{len(result.new_ids):>7}{result.tokens_per_second:>10.1f}   {same} of {len(reference)}")
    print("\nfiles:")
    for path in (checkpoint, serving, tflite):
        print(f"    {path:<44}{directory_size(path) / 2**20:9.1f} MiB")
    print("\nrun them again (--checkpoint gives --saved-model / --tflite the tokenizer):")
    for runtime in ("", f"--saved-model {serving} ", f"--tflite {tflite} "):
        print(f"    tf-mistral generate {runtime}--checkpoint {checkpoint} \"{prompt}\"")


def run_demo(
    output: str | os.PathLike = DEFAULT_OUTPUT,
    checkpoint: str | None = None,
    steps: int | None = None,
    learning_rate: float | None = None,
    text_file: str | os.PathLike | None = None,
    prompt: str | None = None,
    max_new_tokens: int = DEFAULT_NEW_TOKENS,
    quantize: str = "int8",
    dtype: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Runs the main job (see the module docstring); returns a dict of what it measured.

    Args:
        output: folder for the checkpoint, the SavedModel and the .tflite file.
        checkpoint: HF checkpoint folder to start from; None builds the small model.
        steps: fine-tuning steps; default `DEFAULT_STEPS` for the small model, 0 with a checkpoint.
        learning_rate: AdamW learning rate; default 3e-3 (small model) or 1e-3 (LoRA).
        text_file: training text (UTF-8); default the bundled Alice opening.
        prompt: default the text's first words.
        max_new_tokens: tokens each runtime generates (greedy).
        quantize: the TFLite variant ("none", "fp16", "int8", "int4").
        dtype: Keras dtype policy for `checkpoint` (default its own); the small model is float32.
        seed: Keras' global seed (weights, data order).
    """
    # Seed before any tokenizer exists: tf.random.set_seed clears TF's eager kernel cache, which
    # holds tensorflow-text's SentencePiece resource.
    keras.utils.set_random_seed(seed)
    steps = (0 if checkpoint else DEFAULT_STEPS) if steps is None else steps
    learning_rate = learning_rate or (1e-3 if checkpoint else 3e-3)
    os.makedirs(output, exist_ok=True)
    report = Steps(6)

    if checkpoint:
        report(f"loading {checkpoint}")
        model = TFMistralForCausalLM.from_pretrained(checkpoint, dtype=dtype)
    else:
        report("building a small Mistral with the real Mistral v0.1 tokenizer")
        model = build_small_model()
    config = model.config
    with silenced_stderr():  # sentencepiece's "precompiled_charsmap is empty" line
        tokenizer = load_tokenizer(checkpoint=checkpoint, vocab_size=config.vocab_size)  # its own, else v0.1's
    print(f"    {config.num_parameters() / 1e6:,.1f}M parameters: hidden {config.hidden_size}, "
          f"{config.num_hidden_layers} layers, {config.num_attention_heads} heads / "
          f"{config.num_key_value_heads} KV heads, "
          f"sliding window {config.sliding_window}, vocab {config.vocab_size}; {model.dtype_policy.name}", flush=True)

    text = open(text_file, encoding="utf-8").read() if text_file else bundled_text()
    text_ids = tokenizer.encode(text) + [tokenizer.eos_token_id]
    prompt = prompt or default_prompt(text)
    ids = tokenizer.encode(prompt)
    sampling = dict(max_new_tokens=max_new_tokens)

    if steps:
        report(f"fine-tuning on {'your text' if text_file else 'the opening of Alice in Wonderland'} "
               f"({len(text_ids)} tokens) with model.fit")
        metrics = fine_tune(model, text_ids, steps, learning_rate, lora=bool(checkpoint))
    else:
        report("fine-tuning skipped (--steps 0)")
        metrics = {}

    keras_loop = "XLA" if decodes_under_xla(model) else "TF graph"
    report(f"generating with the Keras model (greedy, {keras_loop}), {max_new_tokens} tokens")
    keras_result = run_backend("Keras", backends.keras_generate, model, tokenizer, ids, sampling)
    expected = text_ids[len(ids):] if text.startswith(prompt) and ids == text_ids[:len(ids)] else None
    if expected is not None:
        same = matching_prefix(keras_result.new_ids, expected)
        print(f"    the continuation reproduces the text for {same} of {len(keras_result.new_ids)} tokens", flush=True)

    if steps or not checkpoint:
        report("saving the Hugging Face checkpoint (safetensors + tokenizer.model)")
        folder = os.path.join(output, "checkpoint")
        model.save_pretrained(folder)
        with open(os.path.join(folder, "tokenizer.model"), "wb") as file:
            file.write(tokenizer.model_proto)
        print(f"    {folder}", flush=True)
    else:
        report("nothing to save: the exports read the checkpoint as it is")
        folder = checkpoint
    keras_dtype = model.dtype_policy.variable_dtype
    del model

    report("exporting a TF Serving SavedModel and a TFLite file")
    with silenced_stderr():  # the converter's and sentencepiece's C++ log lines
        serving, tflite = export_both(folder, output, config, keras_dtype, max_new_tokens, quantize)
    tflite_path = tflite["path"]

    report("running the same prompt through the SavedModel and the LiteRT interpreter")
    with silenced_stderr():  # sentencepiece's start-up line as the graph's tokenizer loads
        loaded = backends.load_saved_model(serving["path"])
    saved_result = run_backend("SavedModel", backends.saved_model_generate, loaded, tokenizer, ids, sampling)
    with silenced_stderr():  # LiteRT's accelerator registration lines
        runner = TFLiteRunner(tflite_path, num_threads=2, tokenizer=tokenizer)
    tflite_result = run_backend(
        f"TFLite {quantize}", backends.tflite_generate, runner, tokenizer, ids, sampling, quiet=True
    )
    report.done()

    results = {f"Keras ({keras_loop})": keras_result, "SavedModel": saved_result, f"TFLite {quantize}": tflite_result}
    print_summary(results, folder, os.path.dirname(serving["path"]), tflite_path, prompt)
    total = report.elapsed()
    print(f"\ndone in {total / 60:.1f} min", flush=True)
    return dict(
        metrics=metrics, results=results, checkpoint=folder, saved_model=serving["path"], tflite=tflite_path,
        tflite_bytes=tflite["bytes"], seconds=total,
    )
