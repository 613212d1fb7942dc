"""tf_mistral: Mistral-7B for TensorFlow / Keras 3.

Public API:
    MistralConfig                         hyper-parameters; HF config.json in and out; presets
    TFMistralModel                        the decoder (last hidden state)
    TFMistralForCausalLM                  + lm_head; `generate`
    TFMistralForSequenceClassification    pooled at the last real token
    TFMistralForTokenClassification       one label per token
    TextStreamer                          prints tokens as `generate` makes them
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tf_mistral.config import PRESETS, MistralConfig  # noqa: E402
from tf_mistral.generation.generate import TextStreamer  # noqa: E402
from tf_mistral.models import (  # noqa: E402
    ModelOutput,
    TFMistralForCausalLM,
    TFMistralForSequenceClassification,
    TFMistralForTokenClassification,
    TFMistralModel,
)

__version__ = "0.1.0"
