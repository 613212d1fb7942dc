"""Where a tokenizer's SentencePiece model is: a checkpoint folder, a .model file, or one of the
real Mistral tokenizers shipped inside the mistral-common package (a runtime dependency)."""

import importlib.resources
import os
import pathlib

DEFAULT_MODEL_FILES = {
    "v1": "tokenizer.model.v1",  # Mistral-7B v0.1, Instruct v0.1 / v0.2: 32000 pieces
    "v3": "mistral_instruct_tokenizer_240323.model.v3",  # v0.3: 32768 pieces, [INST] etc. are control ids
}


def model_file_in(folder: str | os.PathLike) -> pathlib.Path | None:
    """The SentencePiece file of a checkpoint folder: tokenizer.model, else the first
    tokenizer.model.vN by name; None when there is neither (or `folder` is not a folder)."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return None
    for candidate in [folder / "tokenizer.model", *sorted(folder.glob("tokenizer.model.v*"))]:
        if candidate.is_file():
            return candidate
    return None


def find_model_file(path: str | os.PathLike) -> pathlib.Path:
    """The SentencePiece file for `path`: the file itself, or the one `model_file_in` finds in a
    folder. FileNotFoundError (saying what is there) when there is none."""
    path = pathlib.Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(
            f"no tokenizer at {path}: pass a checkpoint folder holding tokenizer.model, "
            "or the path of a SentencePiece .model file"
        )
    found = model_file_in(path)
    if found is None:
        raise FileNotFoundError(
            f"{path} holds no tokenizer.model (or tokenizer.model.v*); files there: "
            f"{sorted(p.name for p in path.iterdir())}"
        )
    return found


def default_model_proto(version: str = "v1") -> bytes:
    """The bytes of the real Mistral tokenizer in mistral-common: "v1" (7B v0.1/v0.2) or "v3" (v0.3)."""
    if version not in DEFAULT_MODEL_FILES:
        raise ValueError(f"version must be one of {sorted(DEFAULT_MODEL_FILES)}, got {version!r}")
    return (importlib.resources.files("mistral_common") / "data" / DEFAULT_MODEL_FILES[version]).read_bytes()
