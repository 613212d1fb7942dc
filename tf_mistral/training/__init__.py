"""Fine-tuning with Keras `fit` (see docs/fine-tuning.md).

The heads (`TFMistralForCausalLM`, `...ForSequenceClassification`, `...ForTokenClassification`)
train with `model.compile(optimizer)` and `model.fit(data)` alone (`training.trainer`); this
package adds:
    causal_lm_dataset, sequence_classification_dataset, read_texts, read_jsonl   tf.data pipelines
    enable_lora, save_lora_weights, load_lora_weights                           LoRA (also model methods)
    rematerialize                                                               gradient checkpointing
    ResumableBackup                                                             exact, atomic resume
    causal_lm_loss, IGNORE_INDEX                                                the loss, as HF computes it
"""

from tf_mistral.labels import IGNORE_INDEX
from tf_mistral.training.data import causal_lm_dataset, read_jsonl, read_texts, sequence_classification_dataset
from tf_mistral.training.lora import enable_lora, load_lora_weights, save_lora_weights
from tf_mistral.training.losses import causal_lm_loss
from tf_mistral.training.remat import rematerialize
from tf_mistral.training.resume import ResumableBackup

__all__ = [
    "IGNORE_INDEX", "ResumableBackup", "causal_lm_dataset", "causal_lm_loss", "enable_lora", "load_lora_weights",
    "read_jsonl", "read_texts", "rematerialize", "save_lora_weights", "sequence_classification_dataset",
]
