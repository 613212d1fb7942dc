"""Shared fixtures: the tiny HF checkpoints made by tests/fixtures/make_fixtures.py."""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture_path(name):
    """Folder of one fixture checkpoint, e.g. "tiny_window"."""
    return os.path.join(FIXTURES, name)


@pytest.fixture(scope="session")
def reference():
    """`reference("tiny_window")` -> the npz of HF transformers outputs for that checkpoint;
    `reference("tiny_window", "call_reference")` -> another npz of that folder."""
    cache = {}

    def load(name, file="reference"):
        if (name, file) not in cache:
            cache[name, file] = dict(np.load(os.path.join(FIXTURES, name, f"{file}.npz")))
        return cache[name, file]

    return load


@pytest.fixture(scope="session")
def causal_lm():
    """`causal_lm("tiny_window", dtype=None)` -> a loaded TFMistralForCausalLM, shared per session."""
    from tf_mistral import TFMistralForCausalLM

    cache = {}

    def load(name, dtype=None):
        if (name, dtype) not in cache:
            cache[name, dtype] = TFMistralForCausalLM.from_pretrained(fixture_path(name), dtype=dtype, progress=False)
        return cache[name, dtype]

    return load


@pytest.fixture(scope="session", params=["v1", "v3"])
def tok(request):
    """Each embedded tokenizer: v1 (7B v0.1 / v0.2) and v3 (v0.3); its chat_format names the
    mistral-common reference."""
    from tf_mistral.tokenizer import MistralTokenizer

    return MistralTokenizer.default(request.param)


@pytest.fixture(scope="session")
def tok_v1():
    """The embedded Mistral v0.1 tokenizer (mistral-common's tokenizer.model.v1)."""
    from tf_mistral.tokenizer import MistralTokenizer

    return MistralTokenizer.default("v1")
