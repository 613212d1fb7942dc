"""`stop_strings`: HF's `StopStringCriteria`, checked on the host after each new token.

A row ends at the token whose text completes one of the strings (the string ends inside that
token's text, so a string wholly inside the prompt does not count); its later columns are padding,
and generation stops once every row has ended. Finding a string needs the decoded text, which the
compiled loop does not have (HF's tensor version builds a table over the whole vocabulary per
string), so `generate` runs such a request one compiled step per token from Python, as it does for
a streamer. A request without stop strings keeps the single compiled loop.
"""

from collections.abc import Iterable

import numpy as np

from tf_mistral.tokenizer import MistralTokenizer


class StopStrings:
    """The text of each row so far, and which rows have completed a stop string.

    Args:
        stop_strings: non-empty str.
        tokenizer: has `batch_decode(list of id lists)` (a `MistralTokenizer`).
        input_ids, attention_mask: int numpy `[rows, prompt]`, the prompts (0 in the mask: padding).
    """

    def __init__(
        self, stop_strings: Iterable[str], tokenizer: MistralTokenizer, input_ids: np.ndarray,
        attention_mask: np.ndarray,
    ) -> None:
        self.stop_strings = tuple(stop_strings)
        self.tokenizer = tokenizer
        self.ids = [row[keep.astype(bool)].tolist() for row, keep in zip(input_ids, attention_mask)]
        self.prompt_chars = [len(text) for text in tokenizer.batch_decode(self.ids)]

    def ended(self, token: np.ndarray, running: np.ndarray) -> np.ndarray:
        """bool numpy `[rows]`: the rows whose text a stop string ends in after `token`.

        token: int `[rows]`, the newest column; running: bool `[rows]`, the rows that made it
        (the others emitted padding, which is not part of their text).
        """
        rows = np.flatnonzero(running)
        for row in rows:
            self.ids[row].append(int(token[row]))
        texts = self.tokenizer.batch_decode([self.ids[row] for row in rows]) if rows.size else []
        ended = np.zeros(len(token), bool)
        for row, text in zip(rows, texts):  # earlier tokens were checked: a match now ends in `token`
            start = self.prompt_chars[row]
            ended[row] = any(stop in text[max(start - len(stop) + 1, 0):] for stop in self.stop_strings)
        return ended
