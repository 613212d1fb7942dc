"""The `tf-mistral` command, run in-process through `tf_mistral.cli.main([...])`.

The runtimes behind `generate` are checked against the Keras model's own `generate` on the tiny
fixture (whose parity with HF transformers is tested in test_generation.py).
"""

import importlib.resources
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import fixture_path
from tf_mistral import arguments, cli
from tf_mistral.cli import bench as bench_verb
from tf_mistral.cli import export_saved_model as export_saved_model_verb
from tf_mistral.cli.shared import human_size
from tf_mistral.export import saved_model
from tf_mistral.generation import sampling
from tf_mistral.tokenizer import DEFAULT_MODEL_FILES

PROMPT = "The quick brown fox"
NEW_TOKENS = 12
GENERATE = ["generate", "hi", "--checkpoint", "x"]  # command lines that parse, up to the flags under test
EXPORT = ["export", "saved-model", "--checkpoint", "x", "--output", "y"]


def run(capsys, *argv):
    """(exit code, stdout, stderr) of `tf-mistral argv...`."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """tiny_window with the 1000-piece tokenizer.model beside it (a complete HF folder)."""
    folder = tmp_path_factory.mktemp("cli") / "tiny"
    shutil.copytree(fixture_path("tiny_window"), folder)
    shutil.copy(os.path.join(fixture_path("tiny_tokenizer"), "tokenizer.model"), folder / "tokenizer.model")
    return str(folder)


@pytest.fixture(scope="module")
def keras_text(tiny_checkpoint):
    """The greedy continuation of PROMPT by the Keras model, as text (the reference)."""
    from tf_mistral import TFMistralForCausalLM
    from tf_mistral.tokenizer import MistralTokenizer

    tokenizer = MistralTokenizer.from_pretrained(tiny_checkpoint)
    model = TFMistralForCausalLM.from_pretrained(tiny_checkpoint, progress=False)
    ids = tokenizer.encode(PROMPT)
    output = model.generate(np.array([ids]), max_new_tokens=NEW_TOKENS)
    return tokenizer.decode(output[0].tolist(), skip_special_tokens=True)


# ---- the parser --------------------------------------------------------------------------------


def test_help_lists_every_verb(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("info", "convert", "generate", "chat", "classify", "export", "bench", "demo"):
        assert f"    {name} " in out


@pytest.mark.parametrize("name", sorted(cli.VERBS))
def test_every_verb_has_help(capsys, name):
    code, out, _ = run(capsys, *name.split(), "--help")
    assert code == 0
    assert out.startswith(f"usage: tf-mistral {name}")


def test_no_verb_is_a_usage_error(capsys):
    code, _, err = run(capsys)
    assert code == 2
    assert "usage: tf-mistral" in err


def test_unknown_verb_is_a_usage_error(capsys):
    code, _, err = run(capsys, "train")
    assert code == 2
    assert "invalid choice: 'train'" in err


def test_export_needs_a_sub_verb(capsys):
    code, _, err = run(capsys, "export")
    assert code == 2
    assert "tf-mistral export" in err and "required" in err


def test_bad_flag_value_is_a_usage_error(capsys):
    code, _, err = run(capsys, "export", "tflite", "--checkpoint", "x", "--output", "y.tflite",
                       "--prefill-lengths", "32,a")
    assert code == 2
    assert "expected comma-separated integers like 32,128,512, got '32,a'" in err


def test_bad_choice_is_a_usage_error(capsys):
    code, _, err = run(capsys, "export", "tflite", "--checkpoint", "x", "--output", "y.tflite", "--quantize", "int3")
    assert code == 2
    assert "invalid choice: 'int3'" in err


@pytest.mark.parametrize("argv, message", [
    (GENERATE + ["--temperature", "-1"], "argument --temperature: expected a finite number > 0, got '-1'"),
    (GENERATE + ["--temperature", "inf"], "argument --temperature: expected a finite number > 0, got 'inf'"),
    (GENERATE + ["--temperature", "nan"], "argument --temperature: expected a finite number > 0, got 'nan'"),
    (GENERATE + ["--top-p", "0"], "argument --top-p: expected a number in (0, 1], got '0'"),
    (GENERATE + ["--top-p", "1.5"], "argument --top-p: expected a number in (0, 1], got '1.5'"),
    (GENERATE + ["--top-k", "-1"], "argument --top-k: expected an integer >= 0, got '-1'"),
    (GENERATE + ["--seed", str(2**32)],
     "argument --seed: expected an integer in [-2147483648, 2147483647] (the RNG's int32 key), got '4294967296'"),
    (["chat", "--max-new-tokens", "0"], "argument --max-new-tokens: expected a positive integer, got '0'"),
    (["info", "--preset", "mistral_7b_v0.1", "--max-length", "-5"],
     "argument --max-length: expected a positive integer, got '-5'"),
    (EXPORT + ["--version", "-1"], "argument --version: expected an integer >= 0, got '-1'"),
    (EXPORT + ["--max-length", "0"], "argument --max-length: expected a positive integer, got '0'"),
    (EXPORT + ["--max-new-tokens", "-3"], "argument --max-new-tokens: expected a positive integer, got '-3'"),
    (["export", "tflite", "--checkpoint", "x", "--output", "y", "--cache-length", "0"],
     "argument --cache-length: expected a positive integer, got '0'"),
    (["demo", "--steps", "-1"], "argument --steps: expected an integer >= 0, got '-1'"),
    (["demo", "--learning-rate", "nan"], "argument --learning-rate: expected a finite number > 0, got 'nan'"),
])
def test_a_number_flag_out_of_its_range_is_a_usage_error_naming_the_flag(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.rstrip().endswith(message)


def test_the_seed_flag_takes_the_seeds_generate_takes():
    assert arguments.SEEDS == sampling.SEEDS


def test_debug_before_the_verb_is_kept():
    argv = ["--debug", "info", "--preset", "mistral_7b_v0.1"]
    args = cli.build_parser(argv).parse_args(argv)
    assert args.debug is True
    assert cli.build_parser(argv[1:]).parse_args(argv[1:]).debug is False


# ---- info ---------------------------------------------------------------------------------------


def test_human_size_picks_binary_units():
    assert human_size(512) == "512 B"
    assert human_size(8 * 1024) == "8.00 KiB"
    assert human_size(75 * 2**20) == "75.00 MiB"
    assert human_size(int(13.49 * 2**30)) == "13.49 GiB"
    assert human_size(300 * 2**30) == "300.0 GiB"


def test_info_on_a_preset_shows_parameters_and_memory(capsys):
    from tf_mistral import MistralConfig

    params = MistralConfig.from_preset("mistral_7b_v0.1").num_parameters()
    code, out, _ = run(capsys, "info", "--preset", "mistral_7b_v0.1", "--dtype", "bfloat16", "--max-length", "4096")
    assert code == 0
    assert f"{params:,}" in out
    assert f"weights                 {human_size(params * 2)}" in out
    # 32 layers x 8 kv heads x 128 x (K and V) x 2 bytes x 4096 slots = 512 MiB
    assert "KV cache, batch 1       512.0 MiB (4096 slots)" in out


def test_info_on_a_small_checkpoint_prints_small_units(capsys):
    code, out, _ = run(capsys, "info", "--checkpoint", fixture_path("tiny_window"), "--dtype", "float32")
    assert code == 0
    assert "0.00 GiB" not in out
    assert "KiB" in out
    # 2 layers x 2 kv heads x 32 x 2 x 4 bytes x 16 slots (the window) = 16 KiB
    assert "KV cache, batch 1       16.00 KiB (16 slots)" in out


@pytest.mark.parametrize("argv", [[], ["--preset", "mistral_7b_v0.1", "--checkpoint", "x"]])
def test_info_needs_exactly_one_source(capsys, argv):
    code, out, err = run(capsys, "info", *argv)
    assert (code, out) == (2, "")
    assert err == "tf-mistral info: give exactly one of --checkpoint DIR or --preset NAME\n"


def test_info_names_the_known_presets(capsys):
    code, _, err = run(capsys, "info", "--preset", "mistral_8b")
    assert code == 2
    assert "unknown preset 'mistral_8b'" in err and "mistral_7b_v0.1" in err


# ---- errors -------------------------------------------------------------------------------------


def test_generate_needs_a_runtime(capsys):
    code, _, err = run(capsys, "generate", "hello")
    assert code == 2
    assert "give --checkpoint DIR (Keras), --tflite FILE or --saved-model DIR" in err


def test_generate_takes_one_runtime(capsys):
    code, _, err = run(capsys, "generate", "hello", "--tflite", "a.tflite", "--saved-model", "b")
    assert code == 2
    assert "not allowed with argument" in err


def test_a_failure_is_one_line_without_traceback(capsys, tmp_path):
    missing = str(tmp_path / "nothing")
    code, out, err = run(capsys, "generate", "hello", "--checkpoint", missing)
    assert code == 1
    assert err.startswith("tf-mistral generate: error: ") and missing in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, fixture", [
    (["generate", "hi"], "tiny_window"),
    (["chat"], "tiny_window"),
    (["classify", "hi"], "tiny_seqcls"),
])
def test_the_default_tokenizer_larger_than_the_vocabulary_fails_saying_where_the_tokenizer_goes(capsys, argv, fixture):
    folder = fixture_path(fixture)  # no tokenizer.model: the 32000-piece Mistral v0.1 default
    code, out, err = run(capsys, *argv, "--checkpoint", folder)
    assert (code, out) == (1, "")
    assert err == (
        f"tf-mistral {argv[0]}: error: the model's vocabulary has 1000 ids but the tokenizer (the default Mistral "
        f"v0.1: {folder} has no tokenizer.model) has 32000 pieces: put the model's tokenizer.model in {folder}\n"
    )


def test_another_models_tokenizer_in_the_checkpoint_fails_naming_its_file(capsys, tmp_path):
    folder = tmp_path / "tiny"
    shutil.copytree(fixture_path("tiny_window"), folder)
    v1 = importlib.resources.files("mistral_common") / "data" / DEFAULT_MODEL_FILES["v1"]
    (folder / "tokenizer.model").write_bytes(v1.read_bytes())
    code, _, err = run(capsys, "generate", "hi", "--checkpoint", str(folder))
    assert code == 1
    assert err == (
        f"tf-mistral generate: error: the model's vocabulary has 1000 ids but the tokenizer "
        f"({folder / 'tokenizer.model'}) has 32000 pieces: is it another model's? put this model's own "
        f"tokenizer.model in {folder}\n"
    )


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(Exception, match="nothing"):
        cli.main(["--debug", "generate", "hello", "--checkpoint", str(tmp_path / "nothing")])


def test_missing_tflite_file_fails_with_its_path(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "hi", "--tflite", str(tmp_path / "model.tflite"))
    assert code == 1
    assert "no TFLite model at" in err and "model.tflite" in err


def test_saved_model_folder_without_versions_fails_with_a_hint(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "hi", "--saved-model", str(tmp_path))
    assert code == 1
    assert "no SavedModel at" in err and "export saved-model" in err


# ---- convert ------------------------------------------------------------------------------------


def test_convert_onto_its_own_folder_rewrites_it_in_bfloat16(capsys, tmp_path, tiny_checkpoint):
    import ml_dtypes
    from safetensors.numpy import load_file

    folder = tmp_path / "in_place"
    shutil.copytree(tiny_checkpoint, folder)
    before = load_file(str(folder / "model.safetensors"))
    code, out, err = run(capsys, "convert", "--checkpoint", str(folder), "--output", str(folder), "--dtype", "bfloat16")
    assert code == 0, err
    after = load_file(str(folder / "model.safetensors"))
    assert sorted(after) == sorted(before)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value.astype(ml_dtypes.bfloat16), err_msg=name)
    tokenizer = os.path.join(tiny_checkpoint, "tokenizer.model")
    assert (folder / "tokenizer.model").read_bytes() == open(tokenizer, "rb").read()


def test_convert_refuses_a_bad_shard_size_before_loading(capsys, tmp_path, tiny_checkpoint):
    code, _, err = run(capsys, "convert", "--checkpoint", tiny_checkpoint, "--output", str(tmp_path / "out"),
                       "--max-shard-size", "lots")
    assert code == 2 and "lots" in err
    assert not (tmp_path / "out").exists()


# ---- export saved-model --------------------------------------------------------------------------


@pytest.mark.parametrize("max_length, expected", [(4096, 256), (257, 256), (256, 128), (128, 64), (1, 1)])
def test_default_max_new_tokens_is_256_or_half_a_max_length_it_does_not_fit_below(max_length, expected):
    assert export_saved_model_verb.default_max_new_tokens(max_length) == expected


@pytest.fixture
def exports(monkeypatch):
    """The keyword arguments of each `export_saved_model` call the CLI makes (nothing is exported)."""
    calls = []

    def export(checkpoint, output, **kwargs):
        calls.append(kwargs)
        return dict(signatures=["serving_default"])

    monkeypatch.setattr(export_saved_model_verb, "export_saved_model", export)
    return calls


def test_export_saved_model_lowers_the_default_max_new_tokens_below_max_length_and_says_so(capsys, exports):
    code, out, err = run(capsys, *EXPORT, "--max-length", "128")
    assert code == 0, err
    assert exports[0]["max_length"] == 128 and exports[0]["max_new_tokens"] == 64
    assert "--max-new-tokens defaults to 64 here, half of --max-length 128" in out


def test_export_saved_model_keeps_the_default_max_new_tokens_that_fits_without_a_word(capsys, exports):
    code, out, _ = run(capsys, *EXPORT)
    assert code == 0
    assert exports[0]["max_new_tokens"] == saved_model.DEFAULT_MAX_NEW_TOKENS
    assert out == "signatures: serving_default\n"


def test_export_saved_model_refuses_an_explicit_max_new_tokens_that_does_not_fit(capsys, tmp_path, tiny_checkpoint):
    code, _, err = run(capsys, "export", "saved-model", "--checkpoint", tiny_checkpoint, "--output",
                       str(tmp_path / "m"), "--max-length", "128", "--max-new-tokens", "200")
    assert code == 1
    assert "max_new_tokens (200) must be below max_length (128)" in err


# ---- bench --------------------------------------------------------------------------------------


def test_bench_runs_the_script_with_its_arguments(capsys, tmp_path, monkeypatch):
    script = tmp_path / "fake.py"
    record = tmp_path / "argv.txt"
    script.write_text(f"import sys\nopen({str(record)!r}, 'w').write(' '.join(sys.argv[1:]))\nsys.exit(3)\n")
    monkeypatch.setattr(bench_verb, "bench_script", lambda name: str(script))
    monkeypatch.setattr(bench_verb, "BENCH_LOCK", str(tmp_path / "lock"))
    code, _, _ = run(capsys, "bench", "generate", "--workdir", "/tmp/x", "--help")
    assert code == 3  # the script's own exit code
    assert record.read_text() == "--workdir /tmp/x --help"


def test_bench_without_the_script_says_where_it_looked(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(bench_verb, "CHECKOUT", str(tmp_path))
    code, _, err = run(capsys, "bench", "train")
    assert code == 1
    assert "bench/train.py does not exist" in err and "source checkout" in err


def test_bench_names_are_checked(capsys):
    code, _, err = run(capsys, "bench", "speed")
    assert code == 2
    assert "invalid choice: 'speed'" in err


# ---- generate on each runtime --------------------------------------------------------------------


def test_generate_keras_prints_the_models_text(capsys, tiny_checkpoint, keras_text):
    code, out, err = run(capsys, "generate", PROMPT, "--checkpoint", tiny_checkpoint,
                         "--max-new-tokens", str(NEW_TOKENS))
    assert code == 0
    assert out == keras_text + "\n"
    assert f"{NEW_TOKENS} tokens in" in err and "tokens/s" in err


@pytest.mark.filterwarnings("ignore:Layer .* does not have a `quantize` method")
def test_generate_keras_int8_prints_the_text_of_the_model_keras_quantize_gives(capsys, tiny_checkpoint):
    from tf_mistral import TFMistralForCausalLM
    from tf_mistral.tokenizer import MistralTokenizer

    tokenizer = MistralTokenizer.from_pretrained(tiny_checkpoint)
    model = TFMistralForCausalLM.from_pretrained(tiny_checkpoint, progress=False)
    model.quantize("int8")
    expected = model.generate(np.array([tokenizer.encode(PROMPT)]), max_new_tokens=NEW_TOKENS)
    code, out, _ = run(capsys, "generate", PROMPT, "--checkpoint", tiny_checkpoint, "--quantize", "int8",
                       "--max-new-tokens", str(NEW_TOKENS))
    assert code == 0
    assert out == tokenizer.decode(expected[0].tolist(), skip_special_tokens=True) + "\n"


def test_quantize_with_an_exported_runtime_is_a_usage_error(capsys):
    code, _, err = run(capsys, "generate", "hi", "--tflite", "model.tflite", "--quantize", "int8")
    assert code == 2 and "--quantize applies to the Keras model" in err


@pytest.mark.slow
def test_export_tflite_then_generate_with_it(capsys, tmp_path, tiny_checkpoint, keras_text):
    path = str(tmp_path / "tiny.tflite")
    code, out, _ = run(capsys, "export", "tflite", "--checkpoint", tiny_checkpoint, "--output", path,
                       "--prefill-lengths", "8,16", "--cache-length", "64")
    assert code == 0, out
    assert f"wrote {path}" in out and "signatures prefill_8, prefill_16, decode" in out
    code, out, err = run(capsys, "generate", PROMPT, "--tflite", path, "--checkpoint", tiny_checkpoint,
                         "--max-new-tokens", str(NEW_TOKENS))
    assert code == 0, err
    assert out == keras_text + "\n"


@pytest.mark.slow
def test_export_saved_model_then_generate_with_it(capsys, tmp_path, tiny_checkpoint, keras_text):
    base = str(tmp_path / "serving" / "tiny")
    code, out, _ = run(capsys, "export", "saved-model", "--checkpoint", tiny_checkpoint, "--output", base,
                       "--max-length", "64", "--max-new-tokens", "16", "--dtype", "float32")
    assert code == 0, out
    assert os.path.isfile(os.path.join(base, "1", "saved_model.pb"))
    code, out, err = run(capsys, "generate", PROMPT, "--saved-model", base, "--checkpoint", tiny_checkpoint,
                         "--max-new-tokens", str(NEW_TOKENS))
    assert code == 0, err
    assert out == keras_text + "\n"
    code, _, err = run(capsys, "export", "saved-model", "--checkpoint", tiny_checkpoint, "--output", base,
                       "--version", "1")
    assert code == 1
    assert "already exists" in err


# ---- the demo ------------------------------------------------------------------------------------


def test_training_rows_cover_the_text():
    from tf_mistral import demo

    rows = demo.training_rows(np.arange(10), length=4, stride=4)
    np.testing.assert_array_equal(rows, [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]])
    assert demo.training_rows(np.arange(3), length=8).shape == (1, 3)


def test_the_bundled_text_starts_with_the_default_prompt():
    from tf_mistral import demo

    text = demo.bundled_text()
    assert demo.default_prompt(text) == "Alice was beginning to get very"
    assert text.startswith(demo.default_prompt(text))


@pytest.mark.slow
def test_demo_runs_every_step_on_a_checkpoint(tmp_path, tiny_checkpoint):
    """The whole pipeline on the tiny fixture (LoRA fine-tuning, float32 TFLite), in a fresh process
    as the console script runs it; every runtime gives the Keras model's tokens."""
    output = tmp_path / "demo"
    completed = subprocess.run(
        [sys.executable, "-m", "tf_mistral.cli", "demo", "--checkpoint", tiny_checkpoint, "--output", str(output),
         "--steps", "2", "--max-new-tokens", "8", "--quantize", "none"],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    for step in range(1, 7):
        assert f"[{step}/6]" in out
    for name in ("Keras (XLA)", "SavedModel", "TFLite none"):
        assert any(line.split()[:len(name.split())] == name.split() and line.rstrip().endswith("8 of 8")
                   for line in out.splitlines()), out[-2000:]
    assert (output / "checkpoint" / "model.safetensors").is_file()
    assert (output / "checkpoint" / "tokenizer.model").is_file()
    assert (output / "serving" / "mistral" / "1" / "saved_model.pb").is_file()
    assert (output / "mistral_none.tflite").is_file()


def test_chat_answers_each_turn_and_ends_on_an_empty_line(capsys, monkeypatch, tiny_checkpoint):
    from tf_mistral import TFMistralForCausalLM
    from tf_mistral.tokenizer import MistralTokenizer

    tokenizer = MistralTokenizer.from_pretrained(tiny_checkpoint)
    model = TFMistralForCausalLM.from_pretrained(tiny_checkpoint, progress=False)
    first = [{"role": "user", "content": "Hello"}]
    ids = tokenizer.apply_chat_template(first, return_tensors="np")
    reply = tokenizer.decode(model.generate(ids, max_new_tokens=6)[0, ids.shape[1]:], skip_special_tokens=True)

    lines = iter(["Hello", "And then?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt: next(lines))
    code, out, err = run(capsys, "chat", "--checkpoint", tiny_checkpoint, "--max-new-tokens", "6")
    assert code == 0
    assert out.splitlines()[0] == f"mistral> {reply}"
    assert out.count("mistral> ") == 2 and err.count("tokens/s") == 2
