"""Builds the three public-domain books of `tf_mistral/data/` (`alice_in_wonderland.txt.gz`,
`botchan.txt.gz`, `paradise_lost.txt.gz`) from Project Gutenberg etexts, for training and measuring
a small model on real English (bench/quality.py).

Where the texts come from (both are source distributions on PyPI that carry Project Gutenberg
etexts as test data):
    alice_in_wonderland  Lewis Carroll, "Alice's Adventures in Wonderland" (1865), Project
                         Gutenberg's Millennium Fulcrum Edition 2.9: brotli 1.2.1's
                         tests/testdata/alice29.txt (the Canterbury corpus' copy).
    paradise_lost        John Milton, "Paradise Lost" (1667), Project Gutenberg's February 1992
                         release: brotli 1.2.1's tests/testdata/plrabn12.txt.
    botchan              Natsume Soseki, "Botchan (Master Darling)", translated by Yasotaro
                         Morri, revised by J. R. Kennedy (1919), Project Gutenberg EBook #8868:
                         sentencepiece 0.2.3's test/botchan.txt.
All three are in the public domain (the first two everywhere; Botchan's 1919 translation in the
United States, as Project Gutenberg states). Project Gutenberg's header, licence and footer, and
its notes about the etext, are removed here, as its licence allows for public-domain works: what
remains is the books' own text. Nothing else is changed but the layout: prose paragraphs are
unwrapped onto one line each, verse keeps its lines, blank lines part paragraphs, Alice's
`quotes' use plain apostrophes, and line ends are Unix.

    python -m pip download --no-deps --no-binary :all: -d /tmp/books brotli==1.2.1 sentencepiece==0.2.3
    .venv/bin/python scripts/make_books.py /tmp/books

Deterministic: the same sdists give byte-identical files (gzip without a name or a time).
The sources and licence are described in tf_mistral/data/README.md.
"""

import gzip
import io
import pathlib
import re
import sys
import tarfile

OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "tf_mistral" / "data"
SHORT_LINE = 55  # Botchan lost its blank lines: a wrapped line this short ends a paragraph


def unwrap(paragraphs):
    """One line a paragraph, blank lines between: each paragraph a list of wrapped lines (a line
    ending in a hyphen joins the next without a space)."""
    joined = (" ".join(line.strip() for line in lines) for lines in paragraphs)
    joined = (re.sub(r"\s+", " ", re.sub(r"-\s+(?=\w)", "-", text)).strip() for text in joined)
    return "\n\n".join(text for text in joined if text) + "\n"


def blocks(text):
    """The blank-line-separated blocks of `text`, each a list of its lines."""
    return [block.splitlines() for block in re.split(r"\n\s*\n", text) if block.strip()]


def clean_alice(text):
    """Title, chapter headings and paragraphs: headings are the blocks centred by indentation."""
    paragraphs = []
    for block in blocks(text):
        if all(line.startswith("    ") for line in block):  # centred: a title or chapter heading
            paragraphs.extend([line] for line in block)
        else:
            paragraphs.append(block)
    return unwrap(paragraphs).replace("`", "'")


def clean_paradise_lost(text):
    """The poem from its title on, verse lines kept, the 1964 etext's `***` marks dropped; a
    verse paragraph (its first line indented) starts after a blank line, unindented."""
    lines = [re.sub(r"\s*\*\*\*\s*$", "", line).rstrip() for line in text.splitlines()]
    lines = lines[lines.index("Paradise Lost"):]
    verse = "\n".join("\n" + line.strip() if line.startswith("  ") else line for line in lines)
    return re.sub(r"\n{3,}", "\n\n", verse).strip() + "\n"


def clean_botchan(text):
    """The book between Project Gutenberg's START line and the book's "--(THE END)--", less the
    producer's credit and the transcriber's marks of corrected misprints ("[A]"); paragraphs
    rebuilt from short last lines (this copy has no blank lines), footnotes apart."""
    text = text.split("*** START OF THIS PROJECT GUTENBERG EBOOK BOTCHAN (MASTER DARLING) ***\n", 1)[1]
    text = re.sub(r" ?\[[A-Z]\]", "", text.split("--(THE END)--", 1)[0]) + "--(THE END)--"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[0].startswith("Produced by"):
        lines = lines[1:]
    paragraphs, current = [], []
    for line in lines:
        if line.startswith("[Footnote") and current:
            paragraphs.append(current)
            current = []
        current.append(line)
        if len(line) < SHORT_LINE or line.endswith("]"):
            paragraphs.append(current)
            current = []
    return unwrap(paragraphs + [current])


def read_member(sdist, member):
    with tarfile.open(sdist) as archive:
        raw = archive.extractfile(member).read()
    return raw.decode("utf-8-sig").replace("\r\n", "\n").replace("\x1a", "")  # DOS end-of-file mark


SOURCES = {  # output name: (sdist, member, cleaning)
    "alice_in_wonderland.txt.gz": ("brotli-1.2.1.tar.gz", "brotli-1.2.1/tests/testdata/alice29.txt", clean_alice),
    "paradise_lost.txt.gz": ("brotli-1.2.1.tar.gz", "brotli-1.2.1/tests/testdata/plrabn12.txt", clean_paradise_lost),
    "botchan.txt.gz": ("sentencepiece-0.2.3.tar.gz", "sentencepiece-0.2.3/test/botchan.txt", clean_botchan),
}


def main(folder):
    for name, (sdist, member, clean) in SOURCES.items():
        text = clean(read_member(pathlib.Path(folder) / sdist, member))
        buffer = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as f:
            f.write(text.encode("utf-8"))
        (OUTPUT / name).write_bytes(buffer.getvalue())
        print(f"{name}: {len(text):,} characters, {len(buffer.getvalue()):,} bytes gzipped")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
