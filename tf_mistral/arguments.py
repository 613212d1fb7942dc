"""argparse types for the numbers the command line takes (`tf_mistral.cli` and the exporters'
`add_arguments`): counts, lengths, versions, sampling knobs, sizes, length lists; and
`parse_size`, which `save_pretrained` uses too.

Each parses one flag value or raises `argparse.ArgumentTypeError` saying what it expected and
what it got; argparse then prints `argument --FLAG: MESSAGE` and exits with code 2 (a command
line error), before any work starts. Standard library only.
"""

import argparse
import math
import re

SEEDS = range(-2**31, 2**31)  # every runtime's RNG key is int32: a seed outside would wrap onto one inside


def _checked(convert, text, valid, expected):
    """`convert(text)` if it parses and `valid(value)`; else ArgumentTypeError naming `expected`."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _checked(int, text, lambda value: value >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _checked(int, text, lambda value: value >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (not nan, not inf)."""
    return _checked(float, text, lambda value: math.isfinite(value) and value > 0, "a finite number > 0")


def probability(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    return _checked(float, text, lambda value: 0 < value <= 1, "a number in (0, 1]")


def seed(text: str) -> int:
    """argparse type: an integer in `SEEDS`, [-2**31, 2**31 - 1] (the RNG would wrap a larger one)."""
    return _checked(int, text, lambda value: value in SEEDS,
                    f"an integer in [{SEEDS.start}, {SEEDS.stop - 1}] (the RNG's int32 key)")


def parse_size(size: int | str) -> int:
    """Bytes from a positive int or a string such as "5GB", "100MB", "500KB", "2GiB"."""
    if isinstance(size, int) and not isinstance(size, bool):
        number = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), re.IGNORECASE)
        if not match:
            raise ValueError(f"cannot read a size from {size!r}; write e.g. '5GB' or '500MB'")
        units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
        number = int(float(match.group(1)) * units[(match.group(2) or "B").lower()])
    if number <= 0:
        raise ValueError(f"a size must be positive, got {size!r}")
    return number


def shard_size(text: str) -> str:
    """argparse type: a size such as "5GB" or "500MB", checked, returned as given."""
    try:
        parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def comma_separated_ints(text: str) -> list[int]:
    """argparse type: "32,128,512" -> [32, 128, 512]."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 32,128,512, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 32,128,512, got {text!r}")
    return values
