"""One prompt through each runtime: the Keras model, an exported SavedModel, a `.tflite` file.

All three run the same model path (`forward_with_cache`) and the same samplers; these helpers only
give them one calling convention, so that `tf-mistral generate` and `tf-mistral demo` can run them
side by side:

    result = keras_generate(model, prompt_ids, on_token=print, max_new_tokens=32)
    result.new_ids, result.seconds, result.tokens_per_second

`prompt_ids` is one prompt, a list of int token ids (BOS included). `on_token(id)` is called with
each new id as it is made (the SavedModel returns all ids at once, then calls it for each).
"""

from collections.abc import Callable
import dataclasses
import os
import time
from typing import Any, TextIO

import keras
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer's ops a SavedModel holds)

from tf_mistral.export.saved_model_versions import existing_versions
from tf_mistral.generation.config import GenerationConfig
from tf_mistral.generation.generate import TextStreamer
from tf_mistral.tflite_runner import TFLiteRunner
from tf_mistral.tokenizer import MistralTokenizer

SAMPLING_DEFAULTS = dict(max_new_tokens=64, do_sample=False, temperature=1.0, top_k=0, top_p=1.0, seed=0)
# The Keras model honours every `GenerationConfig` setting but those that change what a call
# returns (one prompt in, one row of ids out here); the exported runtimes the sampling alone.
KERAS_SETTINGS = frozenset(GenerationConfig.field_names()) - {
    "return_dict_in_generate", "output_scores", "output_logits", "num_return_sequences",
}


@dataclasses.dataclass
class Result:
    """New token ids and timings of one generation.

    `first_token_seconds` is the time to the first new token (prefill, plus tracing / compiling
    on a first call) and `second_token_seconds` to the second (a first call of `generate` also
    compiles its decode step there); both None when the runtime returns every token at once
    (SavedModel).
    """

    new_ids: list
    seconds: float
    first_token_seconds: float = None
    second_token_seconds: float = None

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: the tokens after the second over the time after it (after the first when
        only that is known; all over all when neither is)."""
        count = len(self.new_ids)
        for seen, since in ((2, self.second_token_seconds), (1, self.first_token_seconds)):
            if since is not None and count > seen and self.seconds > since:
                return (count - seen) / (self.seconds - since)
        return count / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """"64 tokens in 3.1 s (first after 1.2 s, second after 1.9 s, then 52.3 tokens/s)"."""
        head = f"{len(self.new_ids)} tokens in {self.seconds:.1f} s"
        if self.first_token_seconds is None:
            return f"{head} ({self.tokens_per_second:.1f} tokens/s, prefill included)"
        second = "" if self.second_token_seconds is None else f", second after {self.second_token_seconds:.1f} s"
        return (
            f"{head} (first after {self.first_token_seconds:.1f} s{second}, "
            f"then {self.tokens_per_second:.1f} tokens/s)"
        )


class _Clock:
    """Counts streamed tokens and notes when the first two came."""

    def __init__(self, on_token):
        self.on_token = on_token
        self.started = time.perf_counter()
        self.arrivals = []

    def __call__(self, token):
        if len(self.arrivals) < 2:
            self.arrivals.append(time.perf_counter() - self.started)
        if self.on_token is not None:
            self.on_token(int(token))

    def result(self, new_ids):
        first, second = (self.arrivals + [None, None])[:2]
        return Result(list(new_ids), time.perf_counter() - self.started, first, second)


def _sampling(overrides, runtime, supported=frozenset(SAMPLING_DEFAULTS)):
    """`SAMPLING_DEFAULTS` updated with `overrides`: a TypeError for a name that is no
    `GenerationConfig` setting, a ValueError for a setting `runtime` cannot honour."""
    unknown = set(overrides) - set(GenerationConfig.field_names())
    if unknown:
        raise TypeError(
            f"unknown sampling arguments {sorted(unknown)}; known: {sorted(GenerationConfig.field_names())}"
        )
    GenerationConfig().merged(**overrides).refuse_unsupported(runtime, supported)
    return {**SAMPLING_DEFAULTS, **overrides}


def keras_generate(
    model: keras.Model, prompt_ids: list[int], on_token: Callable[[int], None] | None = None,
    **sampling: Any,
) -> Result:
    """`model.generate` (XLA or a TF graph, as `generate` picks for the dtype) on one prompt,
    streaming; sampling as `generate`'s arguments."""
    sampling = _sampling(sampling, "keras_generate", KERAS_SETTINGS)
    clock = _Clock(on_token)
    output = model.generate(
        np.asarray([prompt_ids], np.int32), streamer=lambda ids: clock(np.asarray(ids)[0]), **sampling
    )
    return clock.result(_until_end(output[0, len(prompt_ids):], model.config.eos_token_ids))


def _until_end(tokens, eos_token_ids):
    """The tokens up to and including the first end token (the rest is padding)."""
    tokens = [int(t) for t in tokens]
    for index, token in enumerate(tokens):
        if token in eos_token_ids:
            return tokens[: index + 1]
    return tokens


def tflite_generate(
    runner: TFLiteRunner, prompt_ids: list[int], on_token: Callable[[int], None] | None = None, **sampling: Any
) -> Result:
    """`TFLiteRunner.generate` (LiteRT interpreter) on one prompt, streaming."""
    sampling = _sampling(sampling, "the TFLite runner")
    clock = _Clock(on_token)
    output = runner.generate(prompt_ids, streamer=clock, **sampling)
    return clock.result(output[len(prompt_ids):])


def find_saved_model(path: str | os.PathLike) -> str:
    """The SavedModel folder for `path`: the folder itself, or the highest numbered version inside
    a TF Serving model folder (`BASE/NAME`)."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = existing_versions(path)
    if not versions:
        raise FileNotFoundError(
            f"no SavedModel at {path}: pass a version folder holding saved_model.pb, or the model folder "
            "holding numbered versions (what `tf-mistral export saved-model --output` wrote)"
        )
    return os.path.join(path, str(versions[-1]))


def load_saved_model(path: str | os.PathLike) -> Any:
    """`tf.saved_model.load` of `find_saved_model(path)`; checks it has the generation signatures."""
    folder = find_saved_model(path)
    loaded = tf.saved_model.load(folder)
    if "generate" not in loaded.signatures:
        raise ValueError(
            f"{folder} has signatures {sorted(loaded.signatures)}, not a causal LM's 'generate' "
            "(a classifier export? use `tf-mistral classify`)"
        )
    loaded.path = folder
    return loaded


def saved_model_generate(
    loaded: Any, prompt_ids: list[int], on_token: Callable[[int], None] | None = None, **sampling: Any
) -> Result:
    """The SavedModel's `generate` signature (token ids in, token ids out) on one prompt.

    Sampling maps onto the signature's knobs: greedy is `temperature 0`. The export's
    `max_new_tokens` caps the request (the signature clamps it).
    """
    sampling = _sampling(sampling, "the SavedModel's generate signature")
    started = time.perf_counter()
    outputs = loaded.signatures["generate"](
        input_ids=tf.constant([prompt_ids], tf.int32),
        attention_mask=tf.ones([1, len(prompt_ids)], tf.int32),
        max_new_tokens=tf.constant(int(sampling["max_new_tokens"])),
        temperature=tf.constant(float(sampling["temperature"]) if sampling["do_sample"] else 0.0),
        top_p=tf.constant(float(sampling["top_p"])),
        top_k=tf.constant(int(sampling["top_k"] or 0)),
        seed=tf.constant(int(sampling["seed"])),
    )
    count = int(outputs["num_tokens"][0])
    new_ids = [int(t) for t in outputs["token_ids"][0, :count].numpy()]
    seconds = time.perf_counter() - started
    for token in new_ids:
        if on_token is not None:
            on_token(token)
    return Result(new_ids, seconds)


def print_generation(
    run: Callable[..., Result], runtime: Any, tokenizer: MistralTokenizer, prompt_ids: list[int],
    file: TextIO | None = None, **sampling: Any,
) -> Result:
    """Runs `run` (`keras_generate`, `saved_model_generate` or `tflite_generate`) on `runtime`,
    printing the new text as it comes, then a newline; returns its `Result`."""
    printer = TextStreamer(tokenizer, prompt_ids=prompt_ids, file=file)
    result = run(runtime, prompt_ids, on_token=printer.put, **sampling)
    printer.end()
    return result
