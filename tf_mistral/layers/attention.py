"""Grouped-query self-attention with rotary embeddings, a band mask and the fixed-size KV cache.

Query head h reads key/value head `h // groups`. K/V are never repeated: the queries of one group
are stacked along the sequence axis (`[batch, kv_heads, groups * seq, head_dim]`) and contracted
against their shared head.
"""

from typing import Any

import keras
from keras import ops

from tf_mistral import cache as kv_cache
from tf_mistral.layers.rotary import apply_rotary_embedding

_MASKED = -1e30  # finite, so a row with no visible key (padding) yields a uniform softmax, not NaN


@keras.saving.register_keras_serializable(package="tf_mistral")
class MistralAttention(keras.layers.Layer):
    """Self-attention of one decoder layer: `q_proj`, `k_proj`, `v_proj`, `o_proj` (no biases)."""

    def __init__(
        self, hidden_size: int, num_attention_heads: int, num_key_value_heads: int, head_dim: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.groups = num_attention_heads // num_key_value_heads
        dense = dict(use_bias=False, dtype=self.dtype_policy)
        self.q_proj = keras.layers.Dense(num_attention_heads * head_dim, name="q_proj", **dense)
        self.k_proj = keras.layers.Dense(num_key_value_heads * head_dim, name="k_proj", **dense)
        self.v_proj = keras.layers.Dense(num_key_value_heads * head_dim, name="v_proj", **dense)
        self.o_proj = keras.layers.Dense(hidden_size, name="o_proj", **dense)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        for projection in (self.q_proj, self.k_proj, self.v_proj):
            projection.build(input_shape)
        self.o_proj.build((*input_shape[:-1], self.num_attention_heads * self.head_dim))

    def call(
        self, x: Any, cos: Any, sin: Any, mask: Any, cache: tuple[Any, Any] | None = None, cache_start: Any = None,
        last_only: bool = False, past: tuple[Any, Any] | None = None, output_attentions: bool = False,
        cache_writes: str = kv_cache.SLICE_WRITES,
    ) -> tuple[Any, ...]:
        """Attends `x` to itself, or to the cache and itself (see `tf_mistral.cache.key_positions`),
        or to HF-style past keys and values and itself.

        Args:
            x: `[batch, seq, hidden]`, compute dtype.
            cos, sin: `[batch, seq, head_dim]` rotary tables for the positions of `x`.
            mask: bool `[batch, 1, 1, seq, keys]`; keys are `seq` without a cache; with one,
                `cache_length` for a single token (written first, then the updated cache is read),
                `cache_length + seq` for a longer chunk (the cache before the write, then `x`), and
                `seq` for a longer chunk written into an empty cache (`x` alone: `cache_start`
                is the Python int 0).
            cache: None, or `(K [batch, kv_heads, cache_length, head_dim],
                V [batch, kv_heads, head_dim, cache_length])` holding the positions before
                `cache_start` (cache_length may be dynamic: the SavedModel sizes it per request).
            cache_start: int32 scalar, the position of `x`'s first token (with a cache); the
                Python int 0 says the cache is empty.
            cache_writes: how a 1-token chunk is written into the cache (`tf_mistral.cache.write`).
            last_only: only the last token queries (its keys and values are still every token's):
                the last layer of a prefill, whose other rows nothing reads.
            past: None, or `(K, V)` both `[batch, kv_heads, past_length, head_dim]` (HF's layout,
                `past_key_values` of `call`; past_length may be 0), the positions before `x`;
                mask keys are then `past_length + seq`. Not used with `cache`.
            output_attentions: also return the attention probabilities.

        Returns:
            `(output [batch, queries, hidden], new_cache)`, queries = 1 when `last_only` else
            seq; new_cache is None without a cache or past, with `past` the `(K, V)` of the past
            followed by `x`'s. With `output_attentions`, a third item: probabilities `[batch,
            heads, queries, keys]` in the compute dtype (head h reads kv head `h // groups`, as HF).
        """
        batch, seq = ops.shape(x)[0], ops.shape(x)[1]
        kv_heads, groups, head_dim = self.num_key_value_heads, self.groups, self.head_dim

        queries, q_cos, q_sin, queries_seq = x, cos, sin, seq
        if last_only:
            queries, q_cos, q_sin, queries_seq = x[:, -1:], cos[:, -1:], sin[:, -1:], 1
            mask = mask[..., -1:, :]
        q = ops.reshape(self.q_proj(queries), (batch, queries_seq, kv_heads, groups, head_dim))
        q = apply_rotary_embedding(ops.transpose(q, (0, 2, 3, 1, 4)), q_cos, q_sin)  # [B, KVH, G, Q, D]
        q = ops.reshape(q, (batch, kv_heads, groups * queries_seq, head_dim))
        k = ops.reshape(self.k_proj(x), (batch, seq, kv_heads, head_dim))
        k = apply_rotary_embedding(ops.transpose(k, (0, 2, 1, 3)), cos, sin)  # [B, KVH, S, D]
        v = ops.reshape(self.v_proj(x), (batch, seq, kv_heads, head_dim))
        v = ops.transpose(v, (0, 2, 3, 1))  # [B, KVH, D, S]

        if past is not None:
            new_cache = (
                ops.concatenate([past[0], k], axis=2), ops.concatenate([past[1], ops.swapaxes(v, 2, 3)], axis=2)
            )
            keys, values = [new_cache[0]], [ops.swapaxes(new_cache[1], 2, 3)]
        elif cache is None:
            keys, values, new_cache = [k], [v], None
        elif kv_cache.writes_first(x.shape[1]):
            new_cache = kv_cache.write(cache[0], cache[1], k, v, cache_start, cache_writes)
            keys, values = [new_cache[0]], [new_cache[1]]
        else:
            fresh = isinstance(cache_start, int) and cache_start == 0  # the keys are the chunk alone
            keys, values = ([k], [v]) if fresh else ([cache[0], k], [cache[1], v])
            new_cache = kv_cache.write(cache[0], cache[1], k, v, cache_start, cache_writes)

        scores = ops.concatenate([ops.einsum("bkqd,bktd->bkqt", q, key) for key in keys], axis=-1)
        scores = scores * ops.cast(head_dim**-0.5, scores.dtype)
        scores = ops.reshape(ops.cast(scores, "float32"), (batch, kv_heads, groups, queries_seq, -1))
        probs = ops.softmax(ops.where(mask, scores, _MASKED), axis=-1)
        probs = ops.reshape(ops.cast(probs, self.compute_dtype), (batch, kv_heads, groups * queries_seq, -1))
        out, offset = 0, 0
        for value in values:
            length = ops.shape(value)[-1]
            out = out + ops.einsum("bkqt,bkdt->bkqd", probs[..., offset:offset + length], value)
            offset = offset + length

        out = ops.reshape(out, (batch, kv_heads, groups, queries_seq, head_dim))
        out = ops.reshape(ops.transpose(out, (0, 3, 1, 2, 4)), (batch, queries_seq, -1))
        if output_attentions:
            return self.o_proj(out), new_cache, ops.reshape(probs, (batch, kv_heads * groups, queries_seq, -1))
        return self.o_proj(out), new_cache

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
        }
