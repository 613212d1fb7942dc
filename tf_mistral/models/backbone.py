"""`TFMistralModel`: token embeddings, the decoder layers and the final norm."""

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from tf_mistral import cache as kv_cache
from tf_mistral.config import MistralConfig
from tf_mistral.layers import MistralDecoderLayer, MistralRMSNorm, RotaryEmbedding
from tf_mistral.layers.attention_mask import band_mask
from tf_mistral.models.outputs import ModelOutput
from tf_mistral.models.pretrained import MistralPreTrainedModel


def unpack_inputs(input_ids: Any, attention_mask: Any) -> tuple[Any, Any]:
    """Accepts `model(ids, attention_mask=...)` and `model({"input_ids": ..., ...})` (fit, predict).

    A dict may also carry "labels" (for `fit`, which passes the whole dict to `call`); the forward
    ignores them and the training loss reads them.
    """
    if isinstance(input_ids, dict):
        inputs = input_ids
        unknown = set(inputs) - {"input_ids", "attention_mask", "labels"}
        if unknown:
            raise ValueError(
                f"unexpected model inputs {sorted(unknown)}; expected input_ids, attention_mask (and labels)"
            )
        return inputs["input_ids"], inputs.get("attention_mask", attention_mask)
    return input_ids, attention_mask


@keras.saving.register_keras_serializable(package="tf_mistral")
class TFMistralModel(MistralPreTrainedModel):
    """The Mistral decoder without a head: `input_ids [batch, seq]` -> `last_hidden_state
    [batch, seq, hidden]` (and, when asked, `hidden_states`: the embeddings and each layer's output)."""

    hf_architecture = "MistralModel"

    def __init__(self, config: MistralConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        config = self.config
        policy = self.dtype_policy
        self.embed_tokens = keras.layers.Embedding(
            config.vocab_size, config.hidden_size, name="embed_tokens", dtype=policy
        )
        self.decoder_layers = [
            MistralDecoderLayer(
                config.hidden_size,
                config.intermediate_size,
                config.num_attention_heads,
                config.num_key_value_heads,
                config.head_dim,
                config.rms_norm_eps,
                config.hidden_act,
                name=f"layers.{i}",
                dtype=policy,
            )
            for i in range(config.num_hidden_layers)
        ]
        self.norm = MistralRMSNorm(config.rms_norm_eps, name="norm", dtype=policy)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, name="rotary_emb", dtype=policy)

    def build(self, input_shape: Any = None) -> None:
        hidden_shape = (None, None, self.config.hidden_size)
        self.embed_tokens.build((None, None))
        for layer in self.decoder_layers:
            layer.build(hidden_shape)
        self.norm.build(hidden_shape)
        self.rotary_emb.build((None, None))
        self.built = True

    def _run_layers(
        self, hidden, position_ids, mask, cache=None, cache_start=None, collect=False, last_only=False,
        past=None, output_attentions=False, intercept=None, cache_writes=kv_cache.SLICE_WRITES,
    ):
        """Runs every decoder layer; returns (normed hidden, new cache list or None, states, attentions).

        `last_only`: the last layer computes the last token alone (see `MistralAttention.call`).
        `past`: per-layer HF-style `(K, V)` (see `call`); the new cache list then holds them
        extended by this chunk. `states` / `attentions` are empty lists unless `collect` /
        `output_attentions`. The two HF-style arguments reach the layers only when used, so the
        cached and training paths (and `training.remat`'s wrapper) see the same calls as before.
        `intercept`: `fn(hidden, i)` on layer i's output, which then goes on as what it returns.
        `cache_writes`: how the layers write a 1-token chunk into `cache` (`tf_mistral.cache.write`).
        """
        cos, sin = self.rotary_emb(position_ids)
        states, attentions = [hidden] if collect else [], []
        new_cache = [] if cache is not None or past is not None else None
        last = len(self.decoder_layers) - 1
        for i, layer in enumerate(self.decoder_layers):
            extra = {}
            if past is not None:
                extra["past"] = past[i]
            if output_attentions:
                extra["output_attentions"] = True
            if cache is not None:
                extra["cache_writes"] = cache_writes
            hidden, layer_cache, *probs = layer(
                hidden, cos, sin, mask,
                cache=None if cache is None else cache[i], cache_start=cache_start,
                last_only=last_only and i == last, **extra,
            )
            attentions.extend(probs)
            if intercept is not None:
                hidden = intercept(hidden, i)
            if new_cache is not None:
                new_cache.append(layer_cache)
            if collect:
                states.append(hidden)
        hidden = self.norm(hidden)
        if collect:
            states[-1] = hidden  # as HF: the last entry is the final norm's output
        return hidden, new_cache, states, attentions

    def empty_past(self, batch_size: Any) -> tuple[tuple[Any, Any], ...]:
        """`past_key_values` holding nothing: per layer `(K, V)` of zeros `[batch, kv_heads, 0, head_dim]`."""
        config = self.config
        shape = (batch_size, config.num_key_value_heads, 0, config.head_dim)
        return tuple(
            (ops.zeros(shape, self.compute_dtype), ops.zeros(shape, self.compute_dtype))
            for _ in range(config.num_hidden_layers)
        )

    def call(
        self, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
        past_key_values: tuple[tuple[Any, Any], ...] | None = None, inputs_embeds: Any = None,
        use_cache: bool | None = None, output_attentions: bool | None = None, output_hidden_states: bool | None = None,
        return_dict: bool | None = None, layer_intercept_fn: Callable[[Any, int], Any] | None = None,
    ) -> ModelOutput | tuple[Any, ...]:
        """Full-sequence forward (training, scoring, classification), with HF's arguments.

        Args:
            input_ids: int `[batch, seq]` (or a dict with `input_ids` / `attention_mask`).
            attention_mask: int or bool `[batch, past + seq]`, 0 for padding (left or right);
                None: all 1.
            position_ids: int `[batch, seq]` for the rotary tables; None: `past .. past + seq - 1`,
                as HF does (rotary attention depends only on position differences, so left
                padding does not change the result).
            past_key_values: what an earlier call returned as `past_key_values`: a tuple with, per
                layer, `(K, V)` both `[batch, kv_heads, past, head_dim]` in the compute dtype
                (HF's legacy tuple layout, keys after rotary embedding). The tokens continue the
                sequence at position `past`. (`generate` keeps its own fixed-size ring cache.)
            inputs_embeds: float `[batch, seq, hidden]` in place of `input_ids`.
            use_cache: also return `past_key_values` extended by these tokens. None: only when
                `past_key_values` is given (unlike HF, never by default: `predict` would collect
                every batch's keys and values).
            output_attentions: also return `attentions`, per layer `[batch, heads, seq, past +
                seq]` in the compute dtype. None: `config.output_attentions`.
            output_hidden_states: also return `hidden_states`, `num_hidden_layers + 1` tensors
                `[batch, seq, hidden]` as HF: the embeddings, each layer's output, and for the
                last layer its output after the final norm (= `last_hidden_state`). None:
                `config.output_hidden_states`.
            return_dict: a `ModelOutput`; False: its `to_tuple()`. None: `config.return_dict`.
            layer_intercept_fn: KerasHub's hook: `fn(x, i)` on the embeddings (i = -1) and each
                decoder layer's output (i = 0 .. layers - 1); what it returns goes on. None: none.

        Returns:
            `ModelOutput(last_hidden_state [batch, seq, hidden], past_key_values, hidden_states,
            attentions)`, the last three when asked.
        """
        input_ids, attention_mask = unpack_inputs(input_ids, attention_mask)
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            hidden = self.embed_tokens(ops.cast(input_ids, "int32"))
        else:
            hidden = ops.cast(inputs_embeds, self.compute_dtype)
        if layer_intercept_fn is not None:
            hidden = layer_intercept_fn(hidden, -1)
        batch, seq = ops.shape(hidden)[0], ops.shape(hidden)[1]
        use_cache = past_key_values is not None if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = self.empty_past(batch)
        query_positions = key_positions = ops.arange(seq, dtype="int32")
        past_length = 0
        if past_key_values is not None:
            past_length = ops.shape(past_key_values[0][0])[2]
            query_positions = past_length + query_positions
            key_positions = ops.arange(past_length + seq, dtype="int32")
        if attention_mask is None:
            attention_mask = ops.ones((batch, past_length + seq), dtype="int32")
        if position_ids is None:
            position_ids = ops.broadcast_to(query_positions[None], (batch, seq))
        mask = band_mask(query_positions, key_positions, ops.cast(attention_mask, "bool"), config.sliding_window)
        collect = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        hidden, presents, states, attentions = self._run_layers(
            hidden, position_ids, mask, collect=collect, past=past_key_values, output_attentions=output_attentions,
            intercept=layer_intercept_fn,
        )
        output = ModelOutput(last_hidden_state=hidden)
        if use_cache:
            output["past_key_values"] = tuple(presents)
        if collect:
            output["hidden_states"] = tuple(states)
        if output_attentions:
            output["attentions"] = tuple(attentions)
        return self.format_output(output, return_dict)

    def forward_with_cache(
        self, input_ids: Any, cache: list[tuple[Any, Any]], start: Any, pad_start: Any = None, last_only: bool = False,
        cache_writes: str = kv_cache.SLICE_WRITES,
    ) -> tuple[Any, list[tuple[Any, Any]]]:
        """A chunk of tokens against the fixed-size cache (prefill or one decode step).

        Args:
            input_ids: int32 `[batch, seq]`, the tokens at positions `start .. start + seq - 1`.
            cache: list of per-layer `(K, V)` (see `tf_mistral.cache`) holding positions `< start`.
            start: int32 scalar; the Python int 0 says the cache is empty, so the chunk attends
                to itself alone (a prefill).
            pad_start: int32 `[batch]`, each row's first real position (left padding); None: 0.
            last_only: return the last token's hidden state alone; the last layer then skips
                the other tokens' queries and MLP (every layer's cache is still complete).
            cache_writes: `tf_mistral.cache.SLICE_WRITES` (TFLite, XLA) or `SCATTER_WRITES` (a
                graph run without XLA): how a 1-token chunk is written (`tf_mistral.cache.write`).

        Returns:
            `(hidden [batch, seq or 1, hidden], new cache)`.
        """
        input_ids = ops.cast(input_ids, "int32")
        seq = ops.shape(input_ids)[1]
        if pad_start is None:
            pad_start = ops.zeros((ops.shape(input_ids)[0],), dtype="int32")
        query_positions = ops.cast(start, "int32") + ops.arange(seq, dtype="int32")
        if isinstance(start, int) and start == 0:  # an empty cache: the chunk attends to itself alone
            key_positions = query_positions
        else:
            key_positions = kv_cache.key_positions(query_positions, ops.shape(cache[0][0])[2])
        key_valid = key_positions[None, :] >= pad_start[:, None]
        mask = band_mask(query_positions, key_positions, key_valid, self.config.sliding_window)
        position_ids = ops.maximum(query_positions[None, :] - pad_start[:, None], 0)
        hidden, new_cache, _, _ = self._run_layers(
            self.embed_tokens(input_ids), position_ids, mask, cache=cache, cache_start=start, last_only=last_only,
            cache_writes=cache_writes,
        )
        return hidden, new_cache
