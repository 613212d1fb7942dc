"""The public-domain text bundled in tf_mistral/data (see its README)."""

import gzip
import importlib.resources

import pytest

BOOKS = ("alice_in_wonderland.txt.gz", "botchan.txt.gz", "paradise_lost.txt.gz")


def read(name):
    return gzip.decompress((importlib.resources.files("tf_mistral") / "data" / name).read_bytes()).decode("utf-8")


@pytest.mark.parametrize("name", BOOKS)
def test_each_book_is_package_data_in_paragraphs(name):
    text = read(name)
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    assert len(text) > 100_000
    assert len(paragraphs) > 50
    assert text.endswith("\n") and "\r" not in text


@pytest.mark.parametrize("name", BOOKS)
def test_each_book_has_no_project_gutenberg_header_or_licence(name):
    text = read(name).lower()
    for phrase in ("gutenberg", "*** start of", "*** end of", "www."):
        assert phrase not in text
