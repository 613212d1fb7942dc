"""The label value that marks "no loss here", shared by the tokenizer's preprocessor, the training
data pipeline and the losses (a leaf module: it imports nothing, so both sides can import it)."""

# HF transformers' label for positions the loss ignores (padding, prompts, BOS of packed docs).
IGNORE_INDEX = -100
