"""`generate()`: HF's arguments, one XLA-compiled loop per (batch, prompt bucket, length bucket, mode).

Prompts are padded on the left to a bucket so that a new prompt length reuses a compiled loop;
the number of new tokens is a tensor inside a bucketed buffer, for the same reason.
"""

import collections.abc
from collections.abc import Iterable, Mapping, Sequence
import time
from typing import Any, TextIO

import keras
import numpy as np
import tensorflow as tf

from tf_mistral import cache as kv_cache
from tf_mistral.generation import buckets, loop
from tf_mistral.generation.config import GenerationConfig
from tf_mistral.generation.outputs import GenerateOutput, generate_output, transition_scores
from tf_mistral.generation.processors import Processing
from tf_mistral.generation.request import (
    as_int_matrix,
    check_prompt,
    default_pad_token_id,
    left_align,
    new_token_count,
    sampling_mode,
    streamer_calls,
)
from tf_mistral.generation.sampling import validate_sampling, validate_seed
from tf_mistral.generation.stop_strings import StopStrings
from tf_mistral.keras_internals import all_layers
from tf_mistral.tokenizer import MistralTokenizer


class GenerationMixin:
    """Adds `generate`, `generation_config` and `compute_transition_scores` to `TFMistralForCausalLM`."""

    @property
    def generation_config(self) -> GenerationConfig:
        """The `GenerationConfig` that `generate` starts from (default: the model config's ids)."""
        if getattr(self, "_generation_config", None) is None:
            self._generation_config = GenerationConfig.from_model_config(self.config)
        return self._generation_config

    @generation_config.setter
    def generation_config(self, value: GenerationConfig | Mapping[str, Any]) -> None:
        """Takes a `GenerationConfig` or the dict of a generation_config.json."""
        if isinstance(value, collections.abc.Mapping) and not isinstance(value, GenerationConfig):
            value = GenerationConfig.from_dict(dict(value))
        if not isinstance(value, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig or a dict, got {type(value).__name__}")
        self._generation_config = value

    def generate(
        self, input_ids: Any, attention_mask: Any = None, generation_config: GenerationConfig | None = None,
        streamer: Any = None, jit_compile: bool | None = None, tokenizer: MistralTokenizer | None = None,
        **kwargs: Any,
    ) -> np.ndarray | tf.Tensor | GenerateOutput:
        """Generates continuations, as HF `generate` does.

        Args:
            input_ids: int `[batch, prompt]` (list, numpy or tensor); rows padded on either side.
                Inside a `tf.function` (HF's `tf.function(model.generate, jit_compile=True)`),
                tensors with a static prompt length, rows padded on the left.
            attention_mask: `[batch, prompt]`, 0 for padding and 1 for tokens; None: no padding.
            generation_config: a `GenerationConfig` (default: `self.generation_config`);
                `kwargs` override its fields: max_new_tokens (default 20) or max_length,
                min_new_tokens, do_sample, temperature, top_k, top_p, min_tokens_to_keep,
                repetition_penalty, no_repeat_ngram_size, num_return_sequences, seed (int in
                [-2**31, 2**31), None: random), eos_token_id (int or list; default the config's),
                pad_token_id (what a finished row emits; default config pad, else the first eos),
                stop_strings, return_dict_in_generate, output_scores, output_logits.
            streamer: an object with `put(token_ids [batch])` and `end()` (e.g. `TextStreamer`),
                or a callable taking the token ids; it receives each new column as it is made.
                A streamer or `stop_strings` make the loop run from Python, one compiled step per
                token (`stop_strings.py`); otherwise it is one compiled `while_loop`.
            jit_compile: True: the decode loop under XLA; False: as a plain TensorFlow graph;
                None (default): the faster on CPU for the model's dtype (`decodes_under_xla`).
                The prefill of float weights runs as a TensorFlow graph either way.
            tokenizer: decodes the rows for `stop_strings` (a `MistralTokenizer`).

        Returns:
            int32 numpy `[batch * num_return_sequences, prompt + n]`: the prompt as given followed
            by the new tokens (n <= max_new_tokens; generation stops early once every row has
            ended). With `return_dict_in_generate`, a `GenerateOutput`: `sequences` as above,
            `scores` / `logits` tuples of n float32 `[rows, vocab]` when asked. Inside a
            `tf.function`, tensors, and n is always max_new_tokens.
        """
        config = (generation_config or self.generation_config).merged(**kwargs)
        config.validate()
        if not tf.executing_eagerly():
            return self._generate_in_graph(input_ids, attention_mask, config)
        input_ids = as_int_matrix(input_ids, "input_ids")
        attention_mask = (
            np.ones_like(input_ids) if attention_mask is None else as_int_matrix(attention_mask, "attention_mask")
        )
        check_prompt(input_ids, attention_mask, self.config.vocab_size)
        input_ids = np.repeat(input_ids, config.num_return_sequences, axis=0)
        attention_mask = np.repeat(attention_mask, config.num_return_sequences, axis=0)
        batch, prompt = input_ids.shape
        real_lengths = attention_mask.sum(axis=1)
        max_new_tokens = self._max_new_tokens(config, prompt, int(real_lengths.max()))
        if jit_compile is None:
            jit_compile = decodes_under_xla(self)
        if not isinstance(jit_compile, bool):
            raise ValueError(f"jit_compile must be True (XLA), False (TF graph) or None (auto), got {jit_compile!r}")
        sampling = self._sampling(config)
        stop_strings = config.stop_strings_list()
        tokenizer = tokenizer or getattr(getattr(self, "preprocessor", None), "tokenizer", None)
        if stop_strings and tokenizer is None:
            raise ValueError("stop_strings needs a tokenizer: pass generate(..., tokenizer=tokenizer)")

        ids, mask = input_ids, attention_mask
        if not (np.diff(attention_mask, axis=1) >= 0).all():  # padding on the right or inside
            ids, mask = (x.numpy() for x in left_align(tf.constant(ids), tf.constant(mask)))
        bucket = buckets.prompt_bucket(prompt)
        ids = np.pad(ids, [(0, 0), (bucket - prompt, 0)], constant_values=sampling.pad_token_id)
        mask = np.pad(mask, [(0, 0), (bucket - prompt, 0)])

        width = buckets.new_tokens_bucket(max_new_tokens)
        cache_length = buckets.cache_length(bucket + width - 1, self.config.sliding_window)
        args = (sampling.temperature, sampling.top_p, sampling.seed)
        state = self._compiled("start", sampling, jit_compile, batch, bucket, width, cache_length)(
            tf.constant(ids), tf.constant(mask), tf.constant(prompt)
        )
        if streamer is None and not stop_strings:
            decode = self._compiled("decode", sampling, jit_compile, batch, width, cache_length)
            state = decode(state, tf.constant(max_new_tokens), *args)
        else:
            first = self._compiled("first", sampling, jit_compile, batch, width, cache_length)
            step = self._compiled("step", sampling, jit_compile, batch, width, cache_length)
            stop = StopStrings(stop_strings, tokenizer, input_ids, attention_mask) if stop_strings else None
            state = _step_on_host(first(state, *args), step, args, max_new_tokens, streamer, stop)
        steps = int(state["step"])
        sequences = np.concatenate([input_ids, state["tokens"].numpy()[:, :steps]], axis=1)
        return generate_output(
            config, sequences, state, lambda recorded: tuple(recorded.numpy()[:, :steps].swapaxes(0, 1))
        )

    def _max_new_tokens(self, config, prompt, longest_prompt):
        """int: `request.new_token_count` of `config` for `prompt` columns, the longest real
        prompt `longest_prompt` tokens, within the model's positions."""
        return new_token_count(config.max_new_tokens, config.max_length, prompt, longest_prompt,
                               self.config.max_position_embeddings)

    def _sampling(self, config):
        """The `loop.Sampling` of a validated `GenerationConfig` (seed, eos and pad resolved)."""
        validate_sampling(config.do_sample, config.temperature, config.top_k, config.top_p)
        eos = (
            self.config.eos_token_ids if config.eos_token_id is None
            else list(np.atleast_1d(config.eos_token_id).tolist())
        )
        pad_token_id = config.pad_token_id
        if pad_token_id is None:
            pad_token_id = default_pad_token_id(self.config.pad_token_id, eos)
        seed = int(np.random.randint(0, 2**31 - 1)) if config.seed is None else config.seed
        validate_seed(seed)
        mode = sampling_mode(config.do_sample, config.top_k, config.top_p, config.min_tokens_to_keep)
        processing = Processing(
            float(config.repetition_penalty), config.no_repeat_ngram_size, config.min_new_tokens,
            config.output_scores, config.output_logits,
        )
        return loop.Sampling(
            mode, tf.constant(float(config.temperature)), tf.constant(float(config.top_p)), tf.constant(int(seed)),
            tuple(int(e) for e in eos), int(pad_token_id), processing=processing,
        )

    def _generate_in_graph(self, input_ids, attention_mask, config):
        """`generate` traced into the caller's `tf.function`: left-padded int `[batch, prompt]`
        tensors with a static prompt length -> int32 `[batch, prompt + max_new_tokens]` (pad after
        a row's end), or a `GenerateOutput` of tensors."""
        if config.stop_strings or config.num_return_sequences > 1:
            raise ValueError("stop_strings and num_return_sequences need an eager generate (outside tf.function)")
        input_ids = tf.cast(input_ids, tf.int32)
        prompt = input_ids.shape[1]
        if prompt is None:
            raise ValueError("generate inside a tf.function needs a static prompt length: pad prompts to fixed lengths")
        attention_mask = tf.ones_like(input_ids) if attention_mask is None else tf.cast(attention_mask, tf.int32)
        max_new_tokens = self._max_new_tokens(config, prompt, prompt)
        sampling = self._sampling(config)
        if config.seed is None and config.do_sample:  # drawn per call, not once at tracing
            sampling = sampling._replace(seed=tf.random.uniform([], 0, 2**31 - 1, tf.int32))
        cache_length = buckets.cache_length(prompt + max_new_tokens - 1, self.config.sliding_window)
        state = loop.start(self, input_ids, attention_mask, max_new_tokens, cache_length, sampling.pad_token_id,
                           sampling.processing)
        state = loop.decode(self, state, max_new_tokens, sampling)
        sequences = tf.concat([input_ids, state["tokens"]], axis=1)
        return generate_output(config, sequences, state, lambda recorded: tuple(tf.unstack(recorded, axis=1)))

    def compute_transition_scores(
        self, sequences: Any, scores: Sequence[Any], normalize_logits: bool = False
    ) -> np.ndarray:
        """HF's `compute_transition_scores` for greedy and sampled outputs.

        Args:
            sequences: int `[rows, prompt + n]` (`GenerateOutput.sequences`).
            scores: n float32 `[rows, vocab]` (`GenerateOutput.scores` or `.logits`).
            normalize_logits: log-softmax each step's scores first.

        Returns:
            float32 numpy `[rows, n]`: each chosen token's score.
        """
        return transition_scores(sequences, scores, normalize_logits)

    def _compiled(self, kind, sampling, jit_compile, batch, *shape):
        """The function of one kind, shape and sampling mode, traced on first use and then reused.

        Kinds (`tf_mistral.generation.loop`): "start" (the prefill; `shape` is the prompt bucket,
        the output width and the cache length; its third argument is the prompt's columns as
        given, the last of the bucket), "decode" (the first token and the `while_loop` of the
        others), and for a loop run from Python (streaming, stop strings) "first" and "step" (one
        token each); the last three depend on the width and the cache length alone.
        The prefill of float weights runs as a TensorFlow graph: on CPU, TensorFlow's oneDNN
        matmuls take its many rows faster than XLA's (bfloat16 twice as fast,
        docs/benchmarks.md); Keras-quantized weights prefill under XLA (TF's graph int8 kernels
        are slow). The decode steps, one row of ~1000 small ops each, run under XLA with
        `jit_compile` (the float32 and int8 default; `decodes_under_xla`), and then every token
        is picked under XLA too, so a seed draws the same numbers as an XLA SavedModel. A trace
        captures the model's variables: when they change (`quantize`, `enable_lora`), every
        function is traced again. Without XLA, a step's cache write is traced as a scatter
        (`cache.SCATTER_WRITES`): the XLA op of a single-slot update would otherwise be compiled
        on its own at every step.
        """
        if not hasattr(self, "generation_traces"):
            self.generation_traces = 0
        weights = tuple(variable.path for variable in self.weights)
        if getattr(self, "_generation_weights", None) != weights:  # new, or quantize() / enable_lora() since
            self._generation_functions, self._generation_weights = {}, weights
        key = (kind, batch, *shape, sampling.mode, sampling.processing, sampling.eos_token_ids, sampling.pad_token_id,
               jit_compile)
        if key not in self._generation_functions:
            static = dict(mode=sampling.mode, eos_token_ids=sampling.eos_token_ids, pad_token_id=sampling.pad_token_id,
                          processing=sampling.processing)

            def run(temperature, top_p, seed):
                return loop.Sampling(temperature=temperature, top_p=top_p, seed=seed, **static)

            xla = jit_compile and (kind != "start" or _quantized(self))
            writes = kv_cache.SLICE_WRITES if xla else kv_cache.SCATTER_WRITES
            functions = {
                "start": lambda ids, mask, prompt_columns: loop.start(
                    self, ids, mask, shape[1], shape[2], sampling.pad_token_id, sampling.processing, prompt_columns,
                    writes,
                ),
                "decode": lambda state, new_tokens, *args: loop.decode(self, state, new_tokens, run(*args), writes),
                "first": lambda state, *args: loop.first_token(state, run(*args)),
                "step": lambda state, *args: loop.decode_step(self, state, run(*args), writes),
            }

            def traced(*args):
                self.generation_traces += 1
                return functions[kind](*args)

            self._generation_functions[key] = tf.function(traced, jit_compile=xla)
        return self._generation_functions[key]


def decodes_under_xla(model: keras.Model) -> bool:
    """What `generate(jit_compile=None)` picks: XLA, except for bfloat16 compute.

    Measured on CPU (docs/benchmarks.md): XLA decodes float32 and Keras-int8 weights fastest. In
    bfloat16 XLA has no fast dot: it converts every weight to float32 at each call (a float32
    copy of the weights in memory meanwhile) and then decodes at the float32 rate, which a plain
    TensorFlow graph (oneDNN's bfloat16 matmuls) matches without the conversion.
    """
    return model.compute_dtype != "bfloat16"


def _quantized(model):
    """Whether Keras `quantize()` replaced any of the model's kernels."""
    return any(getattr(layer, "quantization_mode", None) for layer in all_layers(model))


def _step_on_host(state, step, args, max_new_tokens, streamer=None, stop=None):
    """Runs `step` from Python after the first token (in `state`): each new column reaches
    `streamer` as it is made, and rows whose text completes a stop string (`stop`, a
    `StopStrings`) end before the next step. Returns the final state."""
    put, end = streamer_calls(streamer)
    running = np.ones(state["token"].shape[0], bool)  # the rows that made the newest column
    while True:
        token, finished = state["token"].numpy(), state["finished"].numpy()
        if put is not None:
            put(token)
        ended = np.zeros_like(finished) if stop is None else stop.ended(token, running)
        if ended.any():
            finished = finished | ended
            state = dict(state, finished=tf.constant(finished))
        if int(state["step"]) >= max_new_tokens or finished.all():
            break
        running = ~finished
        state = step(state, *args)
    if end is not None:
        end()
    return state


class TextStreamer:
    """Prints text as it is generated (row 0 of the batch), like HF's `TextStreamer`.

    Args:
        tokenizer: what decodes the ids (a `MistralTokenizer`).
        prompt_ids: ids already shown, not printed again: the new ids are decoded after them, so
            the first new word keeps its leading space.
        skip_special_tokens: leave out <s>, </s> and other control tokens.
        file: where the text goes (default: stdout).

    `put(token_ids)` takes each new column (`[batch]` ids, or one id) and prints the text it adds,
    holding back an unfinished UTF-8 character until its last byte comes; `end()` prints what is
    left (an unfinished character as U+FFFD) and a newline. `tokens_per_second` is known after
    `end()`.
    """

    def __init__(
        self, tokenizer: MistralTokenizer, prompt_ids: Iterable[int] = (), skip_special_tokens: bool = True,
        file: TextIO | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.file = file
        self.ids = [int(i) for i in prompt_ids]
        self.new_tokens, self.started, self.tokens_per_second = 0, None, None
        self.printed = len(self._text())

    def _text(self):
        return self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)

    def _print(self, text):
        print(text[self.printed:], end="", flush=True, file=self.file)
        self.printed = len(text)

    def put(self, token_ids: Any) -> None:
        if self.started is None:
            self.started = time.perf_counter()
        self.ids.append(int(np.asarray(token_ids).reshape(-1)[0]))
        self.new_tokens += 1
        text = self._text()
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            self._print(text)

    def end(self) -> None:
        elapsed = time.perf_counter() - (self.started or time.perf_counter())
        self.tokens_per_second = self.new_tokens / elapsed if elapsed > 0 else None
        self._print(self._text())
        print(file=self.file, flush=True)
