"""The backbone and its heads."""

from tf_mistral.models.backbone import TFMistralModel
from tf_mistral.models.causal_lm import TFMistralForCausalLM
from tf_mistral.models.classifiers import TFMistralForSequenceClassification, TFMistralForTokenClassification
from tf_mistral.models.outputs import ModelOutput

__all__ = [
    "ModelOutput", "TFMistralForCausalLM", "TFMistralForSequenceClassification", "TFMistralForTokenClassification",
    "TFMistralModel",
]
