"""`tf_mistral.backends`: timings, streamed text, SavedModel folder lookup (the runtimes themselves
are checked against the Keras model in test_cli.py)."""

import io

import pytest

from tf_mistral import backends


def test_tokens_per_second_counts_from_the_first_token():
    result = backends.Result([5, 6, 7], seconds=3.0, first_token_seconds=1.0)
    assert result.tokens_per_second == pytest.approx(1.0)  # 2 tokens in the 2 s after the first
    assert result.summary() == "3 tokens in 3.0 s (first after 1.0 s, then 1.0 tokens/s)"


def test_tokens_per_second_without_streaming_includes_the_prefill():
    result = backends.Result([5, 6], seconds=4.0)
    assert result.tokens_per_second == pytest.approx(0.5)
    assert "prefill included" in result.summary()


def test_text_printer_keeps_the_space_before_the_first_new_word(tok_v1):
    prompt = tok_v1.encode("Alice was")
    whole = tok_v1.encode("Alice was beginning to")
    out = io.StringIO()
    printer = backends.TextPrinter(tok_v1, prompt_ids=prompt, file=out)
    for token in whole[len(prompt):]:
        printer(token)
    assert out.getvalue() == " beginning to"


def test_text_printer_waits_for_a_whole_character_and_flushes_the_rest(tok_v1):
    ids = tok_v1.encode("🦜", add_special_tokens=False)  # "▁" then 4 byte pieces (byte fallback)
    out = io.StringIO()
    printer = backends.TextPrinter(tok_v1, file=out)
    for token in ids[:3]:
        printer(token)
    assert out.getvalue() == ""  # "▁" (the stripped dummy prefix) and half a UTF-8 character
    printer(ids[3])
    printer.flush()  # a generation that ends mid-character shows what it has
    assert out.getvalue() == tok_v1.decode(ids[:4]) and out.getvalue().endswith("\ufffd")


def test_text_printer_prints_a_character_once_whole(tok_v1):
    ids = tok_v1.encode("🦜", add_special_tokens=False)
    out = io.StringIO()
    printer = backends.TextPrinter(tok_v1, file=out)
    for token in ids:
        printer(token)
    assert out.getvalue() == "🦜" == tok_v1.decode(ids)


def test_find_saved_model_takes_the_highest_version(tmp_path):
    for version in ("1", "10", "2", ".tmp-11-x"):
        (tmp_path / version).mkdir()
    (tmp_path / "10" / "saved_model.pb").write_bytes(b"")
    assert backends.find_saved_model(tmp_path) == str(tmp_path / "10")
    assert backends.find_saved_model(tmp_path / "10") == str(tmp_path / "10")


def test_unknown_sampling_arguments_are_refused():
    with pytest.raises(TypeError, match="unknown sampling arguments \\['beams'\\]"):
        backends.keras_generate(None, [1], beams=4)
