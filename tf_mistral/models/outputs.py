"""`ModelOutput`: a dict whose entries are also attributes (`out.logits`), as in HF transformers.

It is registered as a Keras tree node, so `fit`, `predict` and `keras.tree` walk into it like a
plain dict.
"""

from collections.abc import Iterable
from typing import Any

from keras.src.tree import register_tree_node_class  # Keras has no public alias for this yet


@register_tree_node_class
class ModelOutput(dict):
    """Named model outputs, e.g. `logits [batch, seq, vocab]` or `last_hidden_state`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"this output has no {name!r}; it has {sorted(self)}") from None

    def to_tuple(self) -> tuple[Any, ...]:
        """The values in HF's order (`loss` first, then `logits` or `last_hidden_state`, ...),
        as `return_dict=False` returns them."""
        return tuple(self.values())

    def tree_flatten(self) -> tuple[tuple[Any, ...], tuple[str, ...], tuple[str, ...]]:
        keys = tuple(self.keys())
        return tuple(self[k] for k in keys), keys, keys

    @classmethod
    def tree_unflatten(cls, keys: tuple[str, ...], values: Iterable[Any]) -> "ModelOutput":
        return cls(zip(keys, values))
