"""Runs an exported `.tflite` (see `tf_mistral.export.tflite`) with LiteRT's `CompiledModel`.

Memory: the file is mapped, not read, and XNNPACK packs each weight once into a weight cache file
(`<model>.xnnpack_cache`, or one in the temp folder when the model's folder is read-only) that
every signature shares and that later loads map instead of packing again. (LiteRT's interpreter
packs the weights once per signature: four copies for `prefill_32/128/512` + `decode`.) The KV
cache lives in 64-byte-aligned host buffers (`KVCache`). `decode` runs in place: its
`kv_cache_*` inputs and outputs are bound to the same buffers, which the graph allows because a
cache input's only reader is the DYNAMIC_UPDATE_SLICE that writes the new token into it (see
`tf_mistral.cache.writes_first`), and TFLite's kernel then writes that one slot instead of
copying the cache (at 7B with 1024 slots, 268 MB per step). A `prefill_{N}` signature still
attends to the cache as it was while it writes the chunk, so it reads one set of buffers and
writes the other, and the written set becomes current; no cache tensor is copied.

Generation, batch 1:
1. Prefill all prompt tokens but the last through the `prefill_{N}` signatures. A remainder of r
   tokens goes through the smallest N >= r, right-padded with position -1, or, when r exceeds
   every N, through the largest N filled exactly; repeat. Padding is safe at any point, also
   after the ring has wrapped under a sliding window: the graph writes only the entries whose
   `input_pos` continue `input_pos[0] + i` (see `tflite.py`).
2. Decode the last prompt token, then each new one, through `decode` (the cache rolls: position
   p lives in slot p % T), and pick tokens with `tf_mistral.generation.sampling.next_tokens`
   (greedy, temperature, top-k, top-p; the stateless RNG keyed by (seed, step)), compiled with
   XLA as in `generate`, so a seed gives `generate`'s tokens.

Without a sliding window every fed position needs its own slot: prompt + new tokens - 1 <= T.

Imports: LiteRT alone runs `prefill` / `decode`; TensorFlow (the sampler, the tokenizer) is
imported inside `generate` and `tokenizer`, on first use, so that a run that only decodes holds
little more memory than the mapped file (a 7B int8 file: docs/scale.md).
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any
import zlib

import numpy as np

from tf_mistral.config import MistralConfig

if TYPE_CHECKING:
    from tf_mistral.tokenizer.mistral_tokenizer import MistralTokenizer

# The `GenerationConfig` settings `TFLiteRunner.generate` honours (its arguments); others are refused.
RUNNER_SETTINGS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed", "eos_token_id")
PAD_POSITION = -1  # input_pos of right padding: never continues a run, so the graph drops it


def sidecar_path(model_path: str | os.PathLike) -> str:
    """The JSON written beside a `.tflite` (config values the runner needs)."""
    return os.fspath(model_path) + ".json"


def write_sidecar(
    model_path: str | os.PathLike, config: MistralConfig, cache_length: int, prefill_lengths: Iterable[int],
    quantize: str, int4_block_size: int | None,
) -> dict[str, Any]:
    """Records what the flatbuffer does not say: the sliding window, token ids, max positions (and,
    for a reader's information, the weights' encoding)."""
    info = dict(
        format="tf_mistral.tflite/1", quantize=quantize, int4_block_size=int4_block_size,
        cache_length=int(cache_length),
        prefill_lengths=[int(n) for n in prefill_lengths], sliding_window=config.sliding_window,
        vocab_size=config.vocab_size, bos_token_id=config.bos_token_id, eos_token_ids=list(config.eos_token_ids),
        max_position_embeddings=config.max_position_embeddings,
    )
    with open(sidecar_path(model_path), "w") as file:
        json.dump(info, file, indent=1)
    return info


def plan_prefill(count: int, lengths: Sequence[int]) -> list[tuple[int, int]]:
    """Chunks `[(signature length N, real tokens)]` that cover `count` tokens (see the module doc)."""
    chunks = []
    while count > 0:
        fitting = [n for n in lengths if n >= count]
        size = fitting[0] if fitting else lengths[-1]
        chunks.append((size, min(size, count)))
        count -= chunks[-1][1]
    return chunks


class KVCache(Mapping):
    """A runner's KV cache, in LiteRT tensor buffers: two sets of `kv_cache_k_i` / `kv_cache_v_i`
    buffers. `decode` reads and writes the current set in place; a prefill reads it and writes the
    other, then `swap` makes the written set current; no cache tensor is copied between steps.
    Reads as `{kv_cache_k_i: [1, KVH, T, Dh], kv_cache_v_i: [1, KVH, Dh, T]}` float32 arrays
    (copies of the current state). Updated in place by the runner."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], make_buffer: Callable[[str], Any]) -> None:
        self._shapes = dict(shapes)
        self._buffers = [{name: make_buffer(name) for name in shapes} for _ in range(2)]
        self._current = 0
        self.load({name: np.zeros(shape, np.float32) for name, shape in shapes.items()})

    def __getitem__(self, name):
        shape = self._shapes[name]
        return self._buffers[self._current][name].read(int(np.prod(shape)), np.float32).reshape(shape)

    def __iter__(self):
        return iter(self._shapes)

    def __len__(self):
        return len(self._shapes)

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Writes `{name: array}` (another cache's state) into the current set."""
        for name, array in arrays.items():
            self._buffers[self._current][name].write(np.asarray(array, np.float32))

    def buffers(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """`(current buffers, the other set)`: a prefill's cache inputs and outputs."""
        return self._buffers[self._current], self._buffers[1 - self._current]

    def swap(self) -> None:
        self._current = 1 - self._current


def weight_cache_path(model_path: str) -> str:
    """Where XNNPACK keeps the packed weights of `model_path`: beside it, or in the temp folder
    (named by the model's path, size and time) when its folder is not writable."""
    folder = os.path.dirname(os.path.abspath(model_path))
    if os.access(folder, os.W_OK):
        return model_path + ".xnnpack_cache"
    stat = os.stat(model_path)
    key = f"{os.path.abspath(model_path)}-{stat.st_size}-{int(stat.st_mtime)}".encode()
    return os.path.join(tempfile.gettempdir(), f"tf_mistral_{zlib.crc32(key):08x}.xnnpack_cache")


class TFLiteRunner:
    """Prefill / decode / generate over the signatures of one `.tflite` file.

    Args:
        path: the `.tflite` file.
        num_threads: CPU threads.
        tokenizer: a `MistralTokenizer`, a tokenizer path, or None (needed by `generate_text` only;
            None there means the default Mistral tokenizer).
        sliding_window: "auto" reads `<path>.json` written by the exporter (no file: no window);
            or an int / None.
        weight_cache: XNNPACK's packed-weight file: "auto" (`weight_cache_path`), a path, or None
            (no cache file: the weights are packed in memory, once per signature).
    """

    def __init__(
        self, path: str | os.PathLike, num_threads: int = 2,
        tokenizer: "MistralTokenizer | str | os.PathLike | None" = None, sliding_window: int | str | None = "auto",
        weight_cache: str | None = "auto",
    ) -> None:
        try:
            from ai_edge_litert.compiled_model import CompiledModel
            from ai_edge_litert.cpu_options import CpuOptions
            from ai_edge_litert.options import Options
        except ImportError as error:
            raise ImportError(
                f"running .tflite files needs ai-edge-litert: pip install 'tf_mistral[export]' ({error})"
            ) from None
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no TFLite model at {path}")
        self.path = path
        self.weight_cache = weight_cache_path(path) if weight_cache == "auto" else weight_cache
        options = Options(cpu_options=CpuOptions(num_threads=num_threads,
                                                 xnnpack_weight_cache_path=self.weight_cache or ""))
        self.model = CompiledModel.from_file(path, options=options)
        self.signatures = self.model.get_signature_list()
        lengths = sorted(int(name[len("prefill_"):]) for name in self.signatures if name.startswith("prefill_"))
        if "decode" not in self.signatures or not lengths:
            raise ValueError(
                f"{path} has signatures {sorted(self.signatures)}; expected prefill_<N> and decode "
                "(export it with tf_mistral.export.tflite.export_tflite)"
            )
        self.prefill_lengths = lengths
        inputs = self.model.get_input_tensor_details("decode")
        self.num_layers = sum(name.startswith("kv_cache_k_") for name in inputs)
        self._shapes = {name: tuple(d["shape"]) for name, d in inputs.items() if name.startswith("kv_cache_")}
        self.cache_length = int(self._shapes["kv_cache_k_0"][2])
        self.vocab_size = int(self.model.get_output_tensor_details("decode")["logits"]["shape"][-1])
        self._token_buffers = {
            key: {name: self.model.create_input_buffer_by_name(key, name) for name in ("tokens", "input_pos")}
            for key in self.signatures
        }
        self._logits = self.model.create_output_buffer_by_name("decode", "logits")
        info = {}
        if os.path.isfile(sidecar_path(path)):
            with open(sidecar_path(path)) as file:
                info = json.load(file)
        self.sliding_window = info.get("sliding_window") if sliding_window == "auto" else sliding_window
        self.eos_token_ids = tuple(info.get("eos_token_ids", ()))
        self.max_positions = info.get("max_position_embeddings")
        self._tokenizer = tokenizer
        self._samplers = {}

    # ---- the signatures ---------------------------------------------------------------------

    def empty_cache(self) -> KVCache:
        """A zeroed `KVCache` (reads as `{kv_cache_k_i: [1, KVH, T, Dh], kv_cache_v_i: [1, KVH, Dh, T]}`)."""
        return KVCache(self._shapes, lambda name: self.model.create_input_buffer_by_name("decode", name))

    def _cache(self, cache):
        """`cache` itself when it is a `KVCache`, else a new one holding a copy of the arrays."""
        if isinstance(cache, KVCache):
            return cache
        own = self.empty_cache()
        own.load(cache)
        return own

    def run_chunk(
        self, signature: str, tokens: np.ndarray, positions: np.ndarray, cache: Mapping[str, np.ndarray]
    ) -> KVCache:
        """Runs one signature on int32 `tokens [1, S]` at `positions [S]`; updates `cache` (a
        `KVCache`, or arrays copied into a new one) and returns it."""
        cache = self._cache(cache)
        ids = self._token_buffers[signature]
        ids["tokens"].write(np.asarray(tokens, np.int32))
        ids["input_pos"].write(np.asarray(positions, np.int32))
        inputs, outputs = cache.buffers()
        if signature == "decode":  # in place (see the module doc)
            self.model.run_by_name(signature, {**inputs, **ids}, {**inputs, "logits": self._logits})
        else:
            self.model.run_by_name(signature, {**inputs, **ids}, dict(outputs))
            cache.swap()
        return cache

    def prefill(self, tokens: Sequence[int] | np.ndarray, cache: Mapping[str, np.ndarray], start: int) -> KVCache:
        """Writes `tokens` (positions `start ..`) into `cache` chunk by chunk; returns the cache."""
        tokens = np.asarray(tokens, np.int32).reshape(-1)
        done = 0
        for size, real in plan_prefill(len(tokens), self.prefill_lengths):
            chunk = np.zeros((1, size), np.int32)
            chunk[0, :real] = tokens[done:done + real]
            positions = np.full((size,), PAD_POSITION, np.int32)
            positions[:real] = np.arange(start + done, start + done + real, dtype=np.int32)
            cache = self.run_chunk(f"prefill_{size}", chunk, positions, cache)
            done += real
        return cache

    def decode(self, token: int, cache: Mapping[str, np.ndarray], position: int) -> tuple[np.ndarray, KVCache]:
        """One token at `position` -> (`logits` float32 `[vocab]`, the updated cache)."""
        cache = self.run_chunk("decode", np.array([[token]], np.int32), np.array([position], np.int32), cache)
        return self._logits.read(self.vocab_size, np.float32), cache

    # ---- generation -----------------------------------------------------------------------------

    def check_cache_slots(self, prompt_length: int, max_new_tokens: int) -> None:
        """Raises ValueError when a generation needs more cache slots than the file has (a model
        without a sliding window keeps every fed position)."""
        fed = prompt_length + max_new_tokens - 1
        if self.sliding_window is None and fed > self.cache_length:
            raise ValueError(
                f"prompt ({prompt_length} tokens) + max_new_tokens ({max_new_tokens}) needs {fed} cache slots, "
                f"but {os.path.basename(self.path)} has {self.cache_length} and no sliding window: shorten "
                f"the prompt, lower max_new_tokens, or re-export with --cache-length {fed} or more"
            )

    def generate(
        self,
        input_ids: Any,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        seed: int = 0,
        eos_token_id: int | Sequence[int] | str | None = "auto",
        streamer: Any = None,
        **settings: Any,
    ) -> np.ndarray:
        """Continues one prompt, as `TFMistralForCausalLM.generate` does for a batch of one.

        Args:
            input_ids: int token ids `[prompt]` (or `[1, prompt]`).
            max_new_tokens, do_sample, temperature, top_k, top_p, seed: as `generate`.
            eos_token_id: int or list ending the generation; "auto": the exporter's config; None: never.
            streamer: as `generate`: an object with `put(token_ids [1])` and `end()` (e.g.
                `tf_mistral.TextStreamer`), or a callable taking the token ids.
            **settings: other `GenerationConfig` settings are refused (ValueError) unless at their
                defaults: the runner samples with the arguments above alone.

        Returns:
            int32 numpy `[prompt + n]`, n <= max_new_tokens (stops after an end token).
        """
        import tensorflow as tf

        from tf_mistral.generation.config import GenerationConfig
        from tf_mistral.generation.request import (
            as_int_matrix,
            check_prompt,
            new_token_count,
            sampling_mode,
            streamer_calls,
        )
        from tf_mistral.generation.sampling import next_tokens, validate_sampling, validate_seed

        GenerationConfig().merged(**settings).refuse_unsupported("TFLiteRunner.generate", RUNNER_SETTINGS)
        prompt = as_int_matrix(input_ids, "input_ids")
        if prompt.shape[0] != 1:
            raise ValueError(
                f"TFLiteRunner.generate continues one prompt, got {prompt.shape[0]} rows: call it once per prompt"
            )
        check_prompt(prompt, np.ones_like(prompt), self.vocab_size)
        prompt = prompt[0].astype(np.int64)
        max_new_tokens = new_token_count(max_new_tokens, None, prompt.size, prompt.size, self.max_positions)
        validate_sampling(do_sample, temperature, top_k, top_p)
        validate_seed(seed)
        self.check_cache_slots(prompt.size, max_new_tokens)
        eos = self.eos_token_ids if eos_token_id == "auto" else tuple(np.atleast_1d(eos_token_id or []).tolist())
        mode = sampling_mode(do_sample, top_k, top_p)
        sampling = (tf.constant(float(temperature)), tf.constant(float(top_p)), tf.constant(int(seed)))
        if mode not in self._samplers:  # XLA, as in `generate`: XLA's stateless RNG differs from TF's kernels
            self._samplers[mode] = tf.function(
                lambda logits, temperature, top_p, seed, step: next_tokens(
                    logits, mode, temperature, top_p, seed, step
                ),
                jit_compile=True,
            )
        sample = self._samplers[mode]

        put, end = streamer_calls(streamer)
        cache = self.prefill(prompt[:-1], self.empty_cache(), 0)
        token, position, new = int(prompt[-1]), prompt.size - 1, []
        for step in range(max_new_tokens):
            logits, cache = self.decode(token, cache, position)
            token = int(sample(logits[None], *sampling, tf.constant(step))[0])
            new.append(token)
            if put is not None:
                put(np.array([token], np.int32))
            if token in eos:
                break
            position += 1
        if end is not None:
            end()
        return np.concatenate([prompt, np.array(new, np.int64)]).astype(np.int32)

    @property
    def tokenizer(self) -> "MistralTokenizer":
        """The `MistralTokenizer` given at construction (loaded on first use: TF Text is imported
        only by runs that tokenize), else Mistral v0.1's."""
        from tf_mistral.tokenizer import load_tokenizer

        self._tokenizer = load_tokenizer(self._tokenizer)
        return self._tokenizer

    def generate_text(self, prompt: str, max_new_tokens: int = 20, **kwargs: Any) -> str:
        """Tokenizes `prompt` (with BOS), generates, and returns the new text (special tokens dropped)."""
        from tf_mistral.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(self.tokenizer, vocab_size=self.vocab_size)
        ids = tokenizer.encode(prompt)
        output = self.generate(ids, max_new_tokens=max_new_tokens, **kwargs)
        return tokenizer.decode(output[len(ids):].tolist(), skip_special_tokens=True)
