"""Tokenizer throughput: tf_mistral's in-graph tokenizer vs `sentencepiece` and HF `tokenizers`.

Encodes one generated corpus (a few MB of varied text: prose, code, many scripts, numbers,
emoji, odd whitespace) with the Mistral v1 tokenizer shipped in mistral-common, at batch 1 and
batch 64, and reports tokens per second. Paths:
  - sentencepiece: `SentencePieceProcessor.encode` (one str, or a list: its C++ threads);
  - HF tokenizers: a fast tokenizer converted offline from the same .model file by transformers
    (`encode` / `encode_batch`, which runs in parallel); its ids differ from sentencepiece on some
    whitespace runs, so the agreement is reported too;
  - tf_mistral eager: `MistralTokenizer.tokenize` called eagerly;
  - tf_mistral tf.function: the same inside a traced `tf.function`;
  - tf_mistral tf.data: `Dataset.batch(n).map(tokenize, num_parallel_calls=AUTOTUNE)`, prefetched;
  - tf_mistral __call__: the HF-style Python call (padding=True, return_tensors="np").
Batch 1 runs over the first `--batch1-docs` documents (per-call overhead dominates there), batch 64
over the whole corpus. Each figure is the best of `--repeats` timed runs after a warm-up.

    python bench/tokenizer.py            # prints the table and updates docs/tokenizer.md
"""

import argparse
import os
import pathlib
import platform
import random
import re
import shutil
import sys
import tempfile
import time

import sentencepiece
import tensorflow as tf
import transformers

from tf_mistral.tokenizer import MistralTokenizer

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "tokenizer.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

WORDS = (
    "the of and to in is was that for on as with by he at from his it an were are which this be or "
    "have had not but one first their its new after who they two her she been other when there all "
    "during into school time may years more most only over city some world would where later up "
    "such used many can state about national out known university united then made season under "
    "government river between film music team war history people system number water light market "
    "model language network between because through memory program function value result energy"
).split()
PHRASES = [
    "日本語の文章を書くのは楽しいです。", "机器学习模型需要大量的数据。", "مرحبا بكم في عالم البرمجة",
    "नमस्ते, आप कैसे हैं?", "Привет, как дела? Всё хорошо.", "Γειά σου κόσμε", "שלום עולם",
    "안녕하세요, 반갑습니다.", "Größenordnung über Äpfel", "façon élégante, déjà vu", "ตัวอย่างภาษาไทย",
]
EMOJI = ["🙂", "🚀", "👩\u200d💻", "👍🏽", "🏳️\u200d🌈", "🎉", "🤖"]
CODE = [
    "def {w}(x, y=None):\n    return [v ** 2 for v in range(x) if v % 3]\n",
    "for (int i = 0; i < n; ++i) {{ total += {w}[i]; }}\n",
    "SELECT {w}, COUNT(*) FROM events WHERE ts > '2024-01-01' GROUP BY 1;\n",
    "<div class=\"{w}\">\n\t<span>{w}</span>\n</div>\r\n",
]


def make_corpus(megabytes, seed=0):
    """Deterministic list of documents, about `megabytes` MB of UTF-8 in total."""
    rng = random.Random(seed)
    docs, size = [], 0
    while size < megabytes * 1_000_000:
        parts = []
        for _ in range(rng.randint(2, 8)):
            kind = rng.random()
            if kind < 0.6:
                sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25)))
                parts.append(sentence.capitalize() + rng.choice([".", "!", "?", ",", ":"]))
            elif kind < 0.75:
                parts.append(rng.choice(CODE).format(w=rng.choice(WORDS)))
            elif kind < 0.87:
                parts.append(rng.choice(PHRASES))
            elif kind < 0.95:
                parts.append(f"{rng.randint(0, 10**6):,} {rng.random() * 1000:.3f} "
                             f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}")
            else:
                parts.append("".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4))))
        doc = rng.choice([" ", "  ", "\n", " \t"]).join(parts)
        docs.append(doc)
        size += len(doc.encode("utf-8"))
    return docs


def best_time(run, repeats):
    run()  # warm-up (and tracing)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def batches(docs, size):
    return [docs[i : i + size] for i in range(0, len(docs), size)]


def hf_tokenizer(model_file):
    """A `tokenizers` fast tokenizer converted by transformers from the SentencePiece file (offline)."""
    folder = tempfile.mkdtemp()
    shutil.copy(model_file, pathlib.Path(folder) / "tokenizer.model")
    fast = transformers.LlamaTokenizerFast.from_pretrained(folder, legacy=False)
    shutil.rmtree(folder)
    return fast.backend_tokenizer


def paths(tok, sp, hf, batch_size):
    """name -> function encoding a list of batches (list of list of str)."""
    encode = tf.function(tok.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])

    def tf_data(groups):
        docs = [d for g in groups for d in g]
        dataset = tf.data.Dataset.from_tensor_slices(docs).batch(batch_size)
        dataset = dataset.map(tok.tokenize, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        for _ in dataset:
            pass

    return {
        "sentencepiece": lambda groups: [sp.encode(g[0] if batch_size == 1 else g, add_bos=True) for g in groups],
        "HF tokenizers": lambda groups: [hf.encode(g[0]) if batch_size == 1 else hf.encode_batch(g) for g in groups],
        "tf_mistral eager": lambda groups: [tok.tokenize(tf.constant(g)) for g in groups],
        "tf_mistral tf.function": lambda groups: [encode(tf.constant(g)) for g in groups],
        "tf_mistral tf.data": tf_data,
        "tf_mistral __call__ (pad, np)": lambda groups: [tok(g, padding=True, return_tensors="np") for g in groups],
    }


def hf_agreement(sp, hf, docs):
    """(share of documents whose HF ids equal sentencepiece's, share of the others holding a whitespace run)."""
    encodings = hf.encode_batch(docs, add_special_tokens=False)
    differ = [d for d, e in zip(docs, encodings) if sp.encode(d) != e.ids]
    with_runs = sum(bool(re.search(r"\s\s", d)) for d in differ)
    return 1 - len(differ) / len(docs), with_runs / max(len(differ), 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=3.0)
    parser.add_argument("--batch1-docs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/tokenizer.md alone")
    args = parser.parse_args()

    tok = MistralTokenizer.default("v1")
    sp = sentencepiece.SentencePieceProcessor(model_proto=tok.model_proto)
    with tempfile.NamedTemporaryFile(suffix=".model") as model_file:
        model_file.write(tok.model_proto)
        model_file.flush()
        hf = hf_tokenizer(model_file.name)
    docs = make_corpus(args.megabytes)
    megabytes = sum(len(d.encode("utf-8")) for d in docs) / 1e6

    rows = []
    for batch_size, subset in ((1, docs[: args.batch1_docs]), (64, docs)):
        tokens = sum(len(ids) for ids in sp.encode(subset, add_bos=True))
        groups = batches(subset, batch_size)
        for name, run in paths(tok, sp, hf, batch_size).items():
            seconds = best_time(lambda: run(groups), args.repeats)
            rows.append((name, batch_size, len(subset), tokens, tokens / seconds))
            print(f"{name:32s} batch {batch_size:3d}: {tokens / seconds:12,.0f} tokens/s", file=sys.stderr)

    table = [
        "| path | batch | docs | tokens | tokens/s |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {name} | {b} | {n:,} | {t:,} | {rate:,.0f} |" for name, b, n, t, rate in rows],
    ]
    agreement, with_runs = hf_agreement(sp, hf, docs)
    section = "\n".join([
        START,
        f"Command: `python bench/tokenizer.py --megabytes {args.megabytes:g} --batch1-docs {args.batch1_docs} "
        f"--repeats {args.repeats}`",
        "",
        f"Corpus: {len(docs):,} generated documents, {megabytes:.2f} MB. "
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; TF {tf.__version__}, "
        f"sentencepiece {sentencepiece.__version__}, transformers {transformers.__version__}.",
        "",
        *table,
        "",
        f"HF `tokenizers` ids equal sentencepiece's on {agreement:.1%} of the documents; {with_runs:.0%} of the "
        "others contain a run of whitespace, which it merges differently.",
        END,
    ])
    print(section)
    if not args.no_write:
        _write_section(section)


def _write_section(section):
    """Replace the benchmark section of docs/tokenizer.md (or append one)."""
    text = DOC.read_text() if DOC.exists() else "# Tokenizer\n"
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n## Benchmark\n\n" + section + "\n"
    DOC.write_text(text)


if __name__ == "__main__":
    main()
