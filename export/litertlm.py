"""LiteRT-LM bundles: the exported `.tflite` + the SentencePiece tokenizer + LLM metadata in one
`.litertlm` file (`litert-lm-builder`), and a greedy text generation through LiteRT-LM's engine
(`litert-lm-api`) to check a bundle against `TFLiteRunner`.

LiteRT-LM's CPU executor finds the signatures by name: the first signature starting with
"prefill" and "decode"; inputs `tokens`, `input_pos`, `kv_cache_k_{i}` / `kv_cache_v_{i}` and the
decode output `logits` `[1, 1, vocab]` (its "PyTorch CPU-only" layout: no mask input). It prefills
all prompt tokens but the last, right-padded with position 0, then decodes from the last one.
"""

import os
import tempfile
from types import ModuleType

from tf_mistral.config import MistralConfig
from tf_mistral.tokenizer import MistralTokenizer, load_tokenizer


def require_builder() -> ModuleType:
    """Imports `litert_lm_builder` or raises ImportError saying what to install."""
    try:
        from litert_lm_builder import litertlm_builder
    except ImportError as error:
        raise ImportError(
            f"--litertlm needs litert-lm-builder: pip install 'tf_mistral[export]' ({error})"
        ) from None
    return litertlm_builder


def llm_metadata(config: MistralConfig, max_num_tokens: int) -> str:
    """`LlmMetadata` textproto: BOS / EOS ids, token budget, a generic model, no thinking or tools."""
    stops = "\n".join(f"stop_tokens {{ token_ids {{ ids: {i} }} }}" for i in config.eos_token_ids)
    return (
        f"start_token {{ token_ids {{ ids: {config.bos_token_id} }} }}\n"
        f"{stops}\n"
        f"max_num_tokens: {int(max_num_tokens)}\n"
        "llm_model_type { generic_model {} }\n"
        "supports_thinking: false\n"
        "supports_function_calling: false\n"
    )


def build_bundle(
    tflite_path: str | os.PathLike,
    config: MistralConfig,
    tokenizer: MistralTokenizer | str | os.PathLike | None = None,
    cache_length: int | None = None,
    output: str | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> str:
    """Writes `<tflite stem>.litertlm` (or `output`) and returns its path.

    Args:
        tflite_path: the exported `.tflite`.
        config: the model's `MistralConfig` (BOS / EOS ids, window).
        tokenizer: a `MistralTokenizer`, or the path of a tokenizer.model (or of a folder holding
            one); None: `checkpoint`'s tokenizer.model, else the default Mistral v0.1 tokenizer
            (`tf_mistral.tokenizer.load_tokenizer`). Its vocabulary must fit the model's.
        cache_length: the export's cache slots; with no sliding window it is also the token
            budget LiteRT-LM is told (`max_num_tokens`), with one the budget is
            `max_position_embeddings`.
        output: the bundle's path (default: the .tflite path with the suffix .litertlm).
        checkpoint: the model's Hugging Face folder, where the default tokenizer is looked for.
    """
    builder_module = require_builder()
    tokenizer = load_tokenizer(tokenizer, checkpoint=checkpoint, vocab_size=config.vocab_size)
    budget = config.max_position_embeddings if config.sliding_window is not None else cache_length
    output = output or os.path.splitext(os.fspath(tflite_path))[0] + ".litertlm"
    with tempfile.TemporaryDirectory(prefix="tf_mistral_litertlm_") as workdir:
        tokenizer_path = os.path.join(workdir, "tokenizer.model")
        metadata_path = os.path.join(workdir, "llm_metadata.textproto")
        with open(tokenizer_path, "wb") as file:
            file.write(tokenizer.model_proto)
        with open(metadata_path, "w") as file:
            file.write(llm_metadata(config, budget or config.max_position_embeddings))
        builder = builder_module.LitertLmFileBuilder()
        builder.add_system_metadata(
            builder_module.Metadata(key="Authors", value="tf_mistral", dtype=builder_module.DType.STRING)
        )
        builder.add_tflite_model(os.fspath(tflite_path), builder_module.TfLiteModelType.PREFILL_DECODE)
        builder.add_sentencepiece_tokenizer(tokenizer_path)
        builder.add_llm_metadata(metadata_path)
        partial = output + ".partial"
        with open(partial, "wb") as file:
            builder.build(file)
    os.replace(partial, output)
    return output


def generate_text(bundle_path: str | os.PathLike, prompt: str, max_new_tokens: int, num_threads: int = 2) -> str:
    """Greedy continuation of `prompt` by LiteRT-LM's engine (CPU), as text.

    The session prepends BOS (the bundle's start token) and applies no chat template.
    """
    try:
        import litert_lm
    except ImportError as error:
        raise ImportError(
            f"running .litertlm bundles needs litert-lm-api: pip install 'tf_mistral[export]' ({error})"
        ) from None
    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
    with tempfile.TemporaryDirectory(prefix="tf_mistral_litertlm_cache_") as cache_dir:
        engine = litert_lm.Engine(
            os.fspath(bundle_path), backend=litert_lm.Backend.CPU(thread_count=num_threads), cache_dir=cache_dir
        )
        try:
            session = engine.create_session(
                apply_prompt_template=False,
                sampler_config=litert_lm.SamplerConfig(top_k=1, top_p=1.0, temperature=1.0, seed=0),
                max_output_tokens=max_new_tokens,
            )
            session.run_prefill([prompt])
            text = session.run_decode().texts[0]
            session.close()
        finally:
            engine.close()
    return text
