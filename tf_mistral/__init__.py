"""tf_mistral: Mistral-7B for TensorFlow / Keras 3.

Public API (imported on first use, so `import tf_mistral` stays light):
    MistralConfig                         hyper-parameters; HF config.json in and out; presets
    TFMistralModel                        the decoder (last hidden state)
    TFMistralForCausalLM                  + lm_head; `generate`; with a preprocessor, strings; `score`
    GenerationConfig                      `generate`'s settings under HF's names; generation_config.json
    TFMistralForSequenceClassification    pooled at the last real token
    TFMistralForTokenClassification       one label per token
    MistralTokenizer                      SentencePiece in-graph; chat formats
    MistralPreprocessor                   Keras layer: strings -> input_ids, attention_mask, labels
    TextStreamer                          prints tokens as `generate` makes them
    TFLiteRunner                          runs an exported .tflite (LiteRT), as `generate` does
"""

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

_PUBLIC = {
    "MistralConfig": "tf_mistral.config",
    "PRESETS": "tf_mistral.config",
    "TFMistralModel": "tf_mistral.models",
    "TFMistralForCausalLM": "tf_mistral.models",
    "TFMistralForSequenceClassification": "tf_mistral.models",
    "TFMistralForTokenClassification": "tf_mistral.models",
    "ModelOutput": "tf_mistral.models",
    "MistralTokenizer": "tf_mistral.tokenizer",
    "MistralPreprocessor": "tf_mistral.tokenizer",
    "TextStreamer": "tf_mistral.generation.generate",
    "GenerationConfig": "tf_mistral.generation.config",
    "TFLiteRunner": "tf_mistral.tflite_runner",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'tf_mistral' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
