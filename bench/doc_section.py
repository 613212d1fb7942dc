"""Writes a benchmark's table into its docs page, between two marker comments."""

import os
import sys


def replace_section(path, begin, end, text, heading=""):
    """Puts `text` between the lines `begin` and `end` of the markdown file `path`.

    The markers (after `heading`) are appended when the page or the markers do not exist yet;
    everything outside them is kept as it is.
    """
    path = os.fspath(path)
    doc = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    if begin not in doc:
        doc += f"\n{heading}{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    tail = rest.split(end, 1)[1]
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{begin}\n{text.rstrip()}\n{end}{tail}")


def publish(path, begin, end, text, heading="", argv=None):
    """Prints `text` and, unless `--no-doc` is among `argv` (default sys.argv), puts it into the
    doc `path` between the `begin` / `end` markers (`replace_section`)."""
    if "--no-doc" not in (sys.argv if argv is None else argv):
        replace_section(path, begin, end, text, heading)
    print(text)
