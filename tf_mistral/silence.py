"""Quieting C++ libraries (TensorFlow, sentencepiece, LiteRT) that write start-up lines straight to
file descriptor 2, where no Python log level reaches."""

from collections.abc import Iterator
import contextlib
import os
import sys


@contextlib.contextmanager
def silenced_stderr() -> Iterator[None]:
    """Sends file descriptor 2 to /dev/null for the block; Python errors surface after it."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
