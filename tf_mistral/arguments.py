"""argparse types for the numbers the command line takes (`tf_mistral.cli` and the exporters'
`add_arguments`): counts, lengths, versions, sampling knobs.

Each parses one flag value or raises `argparse.ArgumentTypeError` saying what it expected and
what it got; argparse then prints `argument --FLAG: MESSAGE` and exits with code 2 (a command
line error), before any work starts. Standard library only.
"""

import argparse
import math

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


def positive_int(text):
    """argparse type: an integer >= 1."""
    return _checked(int, text, lambda value: value >= 1, "a positive integer")


def non_negative_int(text):
    """argparse type: an integer >= 0."""
    return _checked(int, text, lambda value: value >= 0, "an integer >= 0")


def positive_float(text):
    """argparse type: a finite number > 0 (not nan, not inf)."""
    return _checked(float, text, lambda value: math.isfinite(value) and value > 0, "a finite number > 0")


def probability(text):
    """argparse type: a number in (0, 1]."""
    return _checked(float, text, lambda value: 0 < value <= 1, "a number in (0, 1]")


def seed(text):
    """argparse type: an integer in `SEEDS`, [-2**31, 2**31 - 1] (the RNG would wrap a larger one)."""
    return _checked(int, text, lambda value: value in SEEDS,
                    f"an integer in [{SEEDS.start}, {SEEDS.stop - 1}] (the RNG's int32 key)")

