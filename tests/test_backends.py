"""`tf_mistral.backends`: timings, streamed text, SavedModel folder lookup (the runtimes themselves
are checked against the Keras model in test_cli.py)."""

import pytest

from tf_mistral import backends


def test_tokens_per_second_counts_from_the_second_token():
    result = backends.Result([5, 6, 7, 8], seconds=5.0, first_token_seconds=1.0, second_token_seconds=3.0)
    assert result.tokens_per_second == pytest.approx(1.0)  # 2 tokens in the 2 s after the second
    assert result.summary() == "4 tokens in 5.0 s (first after 1.0 s, second after 3.0 s, then 1.0 tokens/s)"


def test_tokens_per_second_counts_from_the_first_token_when_the_second_is_unknown():
    result = backends.Result([5, 6, 7], seconds=3.0, first_token_seconds=1.0)
    assert result.tokens_per_second == pytest.approx(1.0)  # 2 tokens in the 2 s after the first
    assert result.summary() == "3 tokens in 3.0 s (first after 1.0 s, then 1.0 tokens/s)"


def test_tokens_per_second_without_streaming_includes_the_prefill():
    result = backends.Result([5, 6], seconds=4.0)
    assert result.tokens_per_second == pytest.approx(0.5)
    assert "prefill included" in result.summary()


def test_find_saved_model_takes_the_highest_version(tmp_path):
    for version in ("1", "10", "2", ".tmp-11-x"):
        (tmp_path / version).mkdir()
    (tmp_path / "10" / "saved_model.pb").write_bytes(b"")
    assert backends.find_saved_model(tmp_path) == str(tmp_path / "10")
    assert backends.find_saved_model(tmp_path / "10") == str(tmp_path / "10")


def test_unknown_sampling_arguments_are_refused():
    with pytest.raises(TypeError, match="unknown sampling arguments \\['beams'\\]"):
        backends.keras_generate(None, [1], beams=4)
