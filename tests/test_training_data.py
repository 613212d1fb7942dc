"""Training data pipelines: reading, in-graph tokenization, packing, length buckets, chat masks
(against mistral-common), and the epoch-keyed shuffle that exact resumption relies on."""

import functools
import json

from mistral_common.protocol.instruct.messages import AssistantMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.validator import ValidationMode
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer as ReferenceTokenizer
import numpy as np
import pytest

from tf_mistral.tokenizer import MistralTokenizer
from tf_mistral.training import data

DOCS = [
    "The first document is short.",
    "A second document, somewhat longer than the first, with a few more words in it.",
    "Third.",
    "Fourth document: numbers 1 2 3 and an emoji 🙂 to exercise byte fallback.",
]


@pytest.fixture(scope="module")
def tok():
    return MistralTokenizer.default("v1")


@pytest.fixture(scope="module", params=["v1", "v3"])
def chat_tok(request):
    return MistralTokenizer.default(request.param)


def batches(dataset):
    return [{k: v.numpy() for k, v in b.items()} for b in dataset]


def doc_ids(tok, text):
    return [tok.bos_token_id] + tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]


# ---- reading ----------------------------------------------------------------------------------


def test_read_texts_splits_by_file_paragraph_or_line(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("four", encoding="utf-8")
    paths = [tmp_path / "a.txt", tmp_path / "b.txt"]
    assert data.read_texts(paths) == ["one\ntwo\n\nthree\n", "four"]
    assert data.read_texts(paths, split="paragraph") == ["one\ntwo", "three", "four"]
    assert data.read_texts(paths, split="line") == ["one", "two", "three", "four"]


def test_read_jsonl_returns_texts_or_conversations_and_rejects_a_mix(tmp_path):
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n\n{"text": "y"}\n', encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": chat}) + "\n", encoding="utf-8")
    (tmp_path / "m.jsonl").write_text('{"text": "x"}\n' + json.dumps({"messages": chat}) + "\n", encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n{"prompt": 1}\n', encoding="utf-8")
    assert data.read_jsonl(tmp_path / "t.jsonl") == ["x", "y"]
    assert data.read_jsonl(tmp_path / "c.jsonl") == [chat]
    with pytest.raises(ValueError, match="mixes text and chat"):
        data.read_jsonl(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match=r"bad.jsonl:2 has neither"):
        data.read_jsonl(tmp_path / "bad.jsonl")


# ---- plain text ---------------------------------------------------------------------------------


def test_packing_concatenates_documents_into_full_rows(tok):
    stream = sum((doc_ids(tok, d) for d in DOCS), [])
    out = batches(data.causal_lm_dataset(DOCS, tok, sequence_length=16, batch_size=2, shuffle=False))
    rows = np.concatenate([b["input_ids"] for b in out])
    assert rows.shape[1] == 16 and len(rows) == len(stream) // 16 // 2 * 2
    np.testing.assert_array_equal(rows.reshape(-1), stream[: rows.size])
    labels = np.concatenate([b["labels"] for b in out]).reshape(-1)
    np.testing.assert_array_equal(labels, np.where(rows.reshape(-1) == tok.bos_token_id, -100, rows.reshape(-1)))
    assert all((b["attention_mask"] == 1).all() for b in out)


def test_padding_buckets_rows_by_length_and_masks_the_padding(tok):
    out = batches(data.causal_lm_dataset(DOCS, tok, sequence_length=16, batch_size=2, shuffle=False,
                                         packing=False, drop_remainder=False, buckets=[8, 16]))
    lengths = {len(doc_ids(tok, d)) for d in DOCS}
    assert sum(len(b["input_ids"]) for b in out) == len(DOCS)
    for b in out:
        width = b["input_ids"].shape[1]
        assert width in (8, 16)
        real = b["attention_mask"].sum(1)
        assert all(min(n, 16) in {min(m, 16) for m in lengths} for n in real)
        assert all((n <= 8) == (width == 8) for n in real)  # a short row is not padded to 16
        pad = b["attention_mask"] == 0
        assert (b["input_ids"][pad] == tok.pad_token_id).all() and (b["labels"][pad] == -100).all()
    truncated = [row[:16] for row in (doc_ids(tok, d) for d in DOCS) if len(row) > 16]
    assert any((b["input_ids"][i] == t).all() for b in out for i in range(len(b["input_ids"])) for t in truncated
               if b["input_ids"].shape[1] == 16)


# ---- chat ---------------------------------------------------------------------------------------


@functools.cache
def reference(version, mode):
    ref = {"v1": ReferenceTokenizer.v1, "v3": ReferenceTokenizer.v3}[version]()
    return ref if mode == ValidationMode.test else ReferenceTokenizer.from_file(
        str(ref.instruct_tokenizer.tokenizer.file_path), mode=mode)


def encode_reference(version, messages, mode):
    return reference(version, mode).encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens


def one_chat(tok, messages):
    out = batches(data.causal_lm_dataset([messages], tok, sequence_length=256, batch_size=1, shuffle=False,
                                         packing=False, drop_remainder=False))
    mask = out[0]["attention_mask"][0] == 1
    return out[0]["input_ids"][0][mask], out[0]["labels"][0][mask]


def test_chat_trains_on_exactly_mistral_commons_assistant_tokens(chat_tok):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+2? [/INST] </s>"},
        {"role": "assistant", "content": "4, of course. "},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6 🙂"},
    ]
    ids, labels = one_chat(chat_tok, messages)
    assert ids.tolist() == encode_reference(chat_tok.chat_format, messages, ValidationMode.finetuning)
    assistant = reference(chat_tok.chat_format, ValidationMode.test).instruct_tokenizer
    expected = sum((assistant.encode_assistant_message(AssistantMessage(content=m["content"]),
                                                       is_before_last_user_message=False)
                    for m in messages if m["role"] == "assistant"), [])
    assert labels[labels != -100].tolist() == expected


def test_chat_labels_span_each_assistant_turn_as_mistral_common_places_it(chat_tok):
    """Positions, from mistral-common's own encodings of the conversation's prefixes (consecutive
    assistant messages are one turn)."""
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a "},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "c"},
    ]
    version = chat_tok.chat_format
    spans = [(len(encode_reference(version, messages[:1], ValidationMode.test)),
              len(encode_reference(version, messages[:3], ValidationMode.finetuning))),
             (len(encode_reference(version, messages[:4], ValidationMode.test)),
              len(encode_reference(version, messages, ValidationMode.finetuning)))]
    _, labels = one_chat(chat_tok, messages)
    expected = np.zeros(len(labels), bool)
    for start, stop in spans:
        expected[start:stop] = True
    np.testing.assert_array_equal(labels != -100, expected)


def test_train_on_all_labels_every_token_but_bos(tok):
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    out = batches(data.causal_lm_dataset([messages], tok, 64, 1, shuffle=False, packing=False,
                                         drop_remainder=False, train_on="all"))
    ids, labels, mask = out[0]["input_ids"][0], out[0]["labels"][0], out[0]["attention_mask"][0] == 1
    np.testing.assert_array_equal(labels[mask][1:], ids[mask][1:])


# ---- shuffling ----------------------------------------------------------------------------------


WORDS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "olive", "peach", "pear", "plum", "lime"]


def first_tokens(dataset):
    return [b["input_ids"][:, 1].tolist() for b in batches(dataset)]


def test_epoch_keyed_shuffle_depends_on_seed_and_epoch_only(tok):
    docs = [f"{word} document" for word in WORDS]

    def order(seed, epoch):
        return first_tokens(data.causal_lm_dataset(docs, tok, 64, 1, packing=False, seed=seed, epoch=epoch,
                                                   drop_remainder=False))

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(0, 4)
    assert order(0, 3) != order(1, 3)
    assert sorted(sum(order(0, 3), [])) == sorted(sum(order(0, 4), []))


def test_without_epoch_each_pass_is_reshuffled(tok):
    docs = [f"{word} document" for word in WORDS]
    dataset = data.causal_lm_dataset(docs, tok, 64, 1, packing=False, seed=0, drop_remainder=False)
    assert first_tokens(dataset) != first_tokens(dataset)


def test_sequence_classification_batches_pair_inputs_with_labels(tok):
    texts, labels = ["good", "bad movie", "fine, I guess"], [2, 0, 1]
    out = list(data.sequence_classification_dataset(texts, labels, tok, 32, batch_size=8, shuffle=False))
    assert len(out) == 1
    x, y = out[0]
    assert y.numpy().tolist() == labels
    lengths = x["attention_mask"].numpy().sum(1)
    assert lengths.tolist() == [len(tok.encode(t)) for t in texts]
