"""Mistral's SentencePiece tokenizer, running in-graph through tensorflow-text, and its Keras layer.

    from tf_mistral.tokenizer import MistralTokenizer, MistralPreprocessor, load_tokenizer

One job per module; each imports only the ones above it in this list:
    files               where a tokenizer.model is: a folder, a file, mistral-common's defaults
    sentencepiece_op    the SentencePiece model as a `sentencepiece` processor (vocabulary facts)
                        and as the tensorflow-text op, rebuilt after `tf.random.set_seed`
    inputs              checks of Python inputs: text batches, id sequences, padding arguments
    in_graph            `InGraphTokenizer`: encode, decode, pad, truncate as TF ops (graphs,
                        tf.data, SavedModels); the decoding fix for tensorflow-text's older decoder
    mistral_tokenizer   `MistralTokenizer`: the HF-style Python API and the constructors
    preprocessor        `MistralPreprocessor`: the Keras layer, strings -> fixed-length inputs
    loading             `load_tokenizer`: the tokenizer a model gets (given, the checkpoint's, or
                        Mistral v0.1's) and the check that it fits the model's vocabulary
The chat formats (`tf_mistral.chat`) sit beside this package: `MistralTokenizer` imports them,
and they import only `tf_mistral.text_checks`.
"""

from tf_mistral.labels import IGNORE_INDEX
from tf_mistral.text_checks import check_text
from tf_mistral.tokenizer.files import DEFAULT_MODEL_FILES
from tf_mistral.tokenizer.in_graph import CHAT_FORMATS, InGraphTokenizer
from tf_mistral.tokenizer.loading import load_tokenizer
from tf_mistral.tokenizer.mistral_tokenizer import MistralTokenizer
from tf_mistral.tokenizer.preprocessor import MistralPreprocessor

__all__ = [
    "CHAT_FORMATS", "DEFAULT_MODEL_FILES", "IGNORE_INDEX", "InGraphTokenizer", "MistralPreprocessor",
    "MistralTokenizer", "check_text", "load_tokenizer",
]
