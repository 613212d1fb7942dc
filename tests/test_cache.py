"""The fixed-size KV cache (tf_mistral/cache.py) against a plain numpy ring buffer."""

import numpy as np
import pytest
import tensorflow as tf

from tf_mistral import cache as kv_cache

BATCH, KV_HEADS, HEAD_DIM = 2, 3, 4


class NumpyRing:
    """The reference: position p is stored in slot p % length, newest write wins."""

    def __init__(self, length):
        self.length = length
        self.positions = np.full(length, -1)
        self.k = np.zeros((BATCH, KV_HEADS, length, HEAD_DIM), np.float32)
        self.v = np.zeros((BATCH, KV_HEADS, HEAD_DIM, length), np.float32)

    def write(self, k_new, v_new, start):
        for i in range(k_new.shape[2]):
            slot = (start + i) % self.length
            self.positions[slot] = start + i
            self.k[:, :, slot] = k_new[:, :, i]
            self.v[:, :, :, slot] = v_new[:, :, :, i]


def chunk(rng, seq):
    return (rng.standard_normal((BATCH, KV_HEADS, seq, HEAD_DIM)).astype(np.float32),
            rng.standard_normal((BATCH, KV_HEADS, HEAD_DIM, seq)).astype(np.float32))


@pytest.mark.parametrize("max_length, window, expected", [(100, 16, 16), (10, 16, 10), (100, None, 100)])
def test_cache_length_is_the_window_when_there_is_one(max_length, window, expected):
    assert kv_cache.cache_length(max_length, window) == expected


@pytest.mark.parametrize("length", [1, 5, 16])
def test_slot_positions_match_a_numpy_ring(length):
    ring = NumpyRing(length)
    for start in range(3 * length + 2):
        positions = np.asarray(kv_cache.slot_positions(start, length))
        np.testing.assert_array_equal(np.where(positions < 0, -1, positions), ring.positions)
        ring.write(*chunk(np.random.default_rng(start), 1), start)


@pytest.mark.parametrize("chunks", [[1] * 23, [3, 1, 1, 7, 1, 9, 2, 1], [5, 16, 1, 20, 1, 1, 33]])
def test_write_wraps_around_like_a_numpy_ring(chunks):
    length = 8
    rng = np.random.default_rng(0)
    ring = NumpyRing(length)
    k_cache, v_cache = kv_cache.empty_cache(_config(), BATCH, length, "float32")[0]
    start = 0
    for seq in chunks:
        k_new, v_new = chunk(rng, seq)
        k_cache, v_cache = kv_cache.write(k_cache, v_cache, k_new, v_new, start)
        ring.write(k_new, v_new, start)
        start += seq
        np.testing.assert_array_equal(np.asarray(k_cache), ring.k)
        np.testing.assert_array_equal(np.asarray(v_cache), ring.v)
        positions = np.asarray(kv_cache.slot_positions(start, length))
        np.testing.assert_array_equal(np.where(positions < 0, -1, positions), ring.positions)


def test_a_single_token_written_with_scatter_writes_equals_the_slice_update():
    rng = np.random.default_rng(1)
    k_cache, v_cache = chunk(rng, 5)
    k_new, v_new = chunk(rng, 1)
    expected = kv_cache.write(k_cache, v_cache, k_new, v_new, 7)
    specs = [tf.TensorSpec([None, *array.shape[1:]], tf.float32) for array in (k_cache, v_cache, k_new, v_new)]
    write = tf.function(  # traced with any batch size, as the SavedModel is
        lambda *args: kv_cache.write(*args, cache_writes=kv_cache.SCATTER_WRITES),
        input_signature=[*specs, tf.TensorSpec([], tf.int32)],
    )
    graph = write.get_concrete_function().graph
    ops = {op.type for op in graph.get_operations()}
    assert "TensorScatterUpdate" in ops and not any(op.startswith("Xla") for op in ops)
    for got, want in zip(write(k_cache, v_cache, k_new, v_new, np.int32(7)), expected):
        np.testing.assert_array_equal(got.numpy(), np.asarray(want))


def test_a_single_token_is_written_before_it_attends_and_a_chunk_after():
    length = 6
    single = np.asarray(kv_cache.key_positions(np.array([9], np.int32), length))
    np.testing.assert_array_equal(single, kv_cache.slot_positions(10, length))
    assert sorted(single) == list(range(4, 10))
    queries = np.arange(9, 13, dtype=np.int32)
    keys = np.asarray(kv_cache.key_positions(queries, length))
    np.testing.assert_array_equal(keys, np.concatenate([kv_cache.slot_positions(9, length), queries]))


def test_empty_cache_has_the_litert_layout():
    k, v = kv_cache.empty_cache(_config(), BATCH, 7, "float32")[0]
    assert tuple(k.shape) == (BATCH, KV_HEADS, 7, HEAD_DIM)
    assert tuple(v.shape) == (BATCH, KV_HEADS, HEAD_DIM, 7)


def _config():
    from tf_mistral import MistralConfig

    return MistralConfig(num_hidden_layers=1, num_key_value_heads=KV_HEADS, num_attention_heads=KV_HEADS,
                         hidden_size=KV_HEADS * HEAD_DIM, head_dim=HEAD_DIM)
