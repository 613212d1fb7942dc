"""The tokenizer a model gets, in one place for the CLI, the demo and every exporter and runtime:
the one given, else the checkpoint's tokenizer.model, else Mistral v0.1's; and the check that its
ids fit the model's vocabulary."""

import os

from tf_mistral.tokenizer.files import find_model_file, model_file_in
from tf_mistral.tokenizer.mistral_tokenizer import MistralTokenizer


def load_tokenizer(
    tokenizer: MistralTokenizer | str | os.PathLike | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    vocab_size: int | None = None,
) -> MistralTokenizer:
    """The tokenizer for a model, checked against its vocabulary.

    Args:
        tokenizer: a `MistralTokenizer` (used as is), or the path of a SentencePiece .model file
            or of a folder holding tokenizer.model (it must be there). None: the next two.
        checkpoint: the model's folder; when `tokenizer` is None, its tokenizer.model (or
            tokenizer.model.vN) is used if it has one, else Mistral v0.1's tokenizer
            (`MistralTokenizer.default("v1")`, 32000 pieces).
        vocab_size: the model's vocabulary size; a tokenizer with more pieces (ids the model has
            no embedding row for) is a ValueError saying which tokenizer it was and what to do.
            None: no check.

    Returns:
        the MistralTokenizer, with its default options (add_bos, left padding).
    """
    if isinstance(tokenizer, MistralTokenizer):
        source, fix = "the MistralTokenizer given", "pass the model's own tokenizer"
    elif tokenizer is not None:
        path = find_model_file(tokenizer)
        tokenizer = MistralTokenizer(path.read_bytes())
        source, fix = str(path), "is it another model's? pass this model's own tokenizer.model"
    elif checkpoint is not None and (path := model_file_in(checkpoint)) is not None:
        tokenizer = MistralTokenizer(path.read_bytes())
        source, fix = str(path), f"is it another model's? put this model's own tokenizer.model in {checkpoint}"
    else:
        tokenizer = MistralTokenizer.default("v1")
        if checkpoint is not None:
            source = f"the default Mistral v0.1: {checkpoint} has no tokenizer.model"
            fix = f"put the model's tokenizer.model in {checkpoint}"
        else:
            source = "the default Mistral v0.1: no checkpoint given"
            fix = "pass the model's tokenizer.model, or the checkpoint folder holding it"
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"the model's vocabulary has {vocab_size} ids but the tokenizer ({source}) has "
            f"{tokenizer.vocab_size} pieces: {fix}"
        )
    return tokenizer
