"""What `generate` returns besides token ids: `GenerateOutput` and transition scores."""

from collections.abc import Callable, Sequence
import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from tf_mistral.generation.config import GenerationConfig

if TYPE_CHECKING:
    import tensorflow as tf


@dataclasses.dataclass
class GenerateOutput:
    """HF's `GenerateDecoderOnlyOutput`: read as `out.sequences` or `out["sequences"]`.

    sequences: int32 `[rows, prompt + n]`. scores: n float32 `[rows, vocab]`, the scores each
    step chose from (after the processors, and when sampling after temperature, top-k and top-p),
    or None. logits: n float32 `[rows, vocab]`, the model's logits of each step, or None.
    """

    sequences: object
    scores: tuple = None
    logits: tuple = None

    def __getitem__(self, name):
        return getattr(self, name)

    def keys(self) -> list[str]:
        """The fields that are set, as HF's output lists them."""
        return [field.name for field in dataclasses.fields(self) if getattr(self, field.name) is not None]


def generate_output(
    config: GenerationConfig, sequences: "np.ndarray | tf.Tensor", state: dict[str, Any],
    split: Callable[[Any], tuple],
) -> "np.ndarray | tf.Tensor | GenerateOutput":
    """What `generate` returns: `sequences`, or with `return_dict_in_generate` a `GenerateOutput`
    whose `scores` / `logits` (when asked) are `split` of the loop state's recorded float32
    `[rows, width, vocab]` buffer: one `[rows, vocab]` per step made."""
    if not config.return_dict_in_generate:
        return sequences
    recorded = {"scores": ("scores", config.output_scores), "logits": ("raw_logits", config.output_logits)}
    return GenerateOutput(sequences, **{name: split(state[key]) for name, (key, wanted) in recorded.items() if wanted})


def transition_scores(sequences: Any, scores: Sequence[Any], normalize_logits: bool = False) -> np.ndarray:
    """float32 numpy `[rows, n]`: the score of each of the last n tokens of `sequences` (int
    `[rows, prompt + n]`) in its step's `scores` (n float `[rows, vocab]`), log-softmaxed first
    with `normalize_logits` (HF's `compute_transition_scores` without beams)."""
    stacked = np.stack([np.asarray(step, np.float32) for step in scores], axis=1)  # [rows, n, vocab]
    if normalize_logits:
        top = stacked.max(axis=-1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        stacked = stacked - top - np.log(np.exp(stacked - top).sum(axis=-1, keepdims=True))
    tokens = np.asarray(sequences)[:, -stacked.shape[1]:]
    return np.take_along_axis(stacked, tokens[..., None].astype(np.int64), axis=-1)[..., 0]

