"""Turns a text corpus into the token HDF5 that `data.format = "tokens_h5"` reads, with the model's
own tokenizer (transformers' AutoTokenizer on the model directory; nothing is downloaded).

    python launch/prepare_tokens.py MODEL_DIR CORPUS OUT.h5 --seq-len 512 [--samples N] [--no-eos] [--no-bos-windows]
    python launch/prepare_tokens.py MODEL_DIR CORPUS OUT.h5 --seq-len 64 --sentences [--samples N] [--seed S]

CORPUS is a text file whose documents are separated by blank lines, or a directory whose *.txt files
are one document each (in name order). Each document gets the tokenizer's special tokens (BOS) and, unless
--no-eos, an EOS token; all are concatenated and cut into windows of seq_len (the remainder is
dropped). When the tokenizer adds a BOS token to a text (Gemma, LLaMA), every window starts with BOS and
holds the next seq_len - 1 tokens of the stream (or, where the stream's next token is a document's own BOS,
the seq_len tokens from it: never BOS twice): such models are trained on sequences that begin with it
(Gemma-3-270M's perplexity is about 4x worse on windows without it); --no-bos-windows cuts plainly.
Writes input_ids int32 [samples, seq_len] and attributes naming the tokenizer and corpus.

--sentences (sentence encoders such as BERT): one sample per sentence of the corpus (5 to 80 words, the
documents' whitespace collapsed), tokenized alone with the tokenizer's special tokens ([CLS] ... [SEP]),
truncated to seq_len and right-padded, with attention_mask int32 [samples, seq_len] beside input_ids.
The sentences are shuffled with --seed (documents are topical; a held-out tail should not be one topic).
"""
import argparse
import os
import random
import re

import h5py
import numpy as np
from transformers import AutoTokenizer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("corpus")
    p.add_argument("out")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--samples", type=int, default=0, help="at most this many windows (0 = all)")
    p.add_argument("--no-eos", action="store_true")
    p.add_argument("--no-bos-windows", action="store_true",
                   help="do not start every window with BOS (the default when the tokenizer adds one)")
    p.add_argument("--sentences", action="store_true", help="one padded sample per sentence, with attention_mask")
    p.add_argument("--seed", type=int, default=0, help="--sentences: shuffle seed")
    a = p.parse_args()

    tok = AutoTokenizer.from_pretrained(a.model_dir, local_files_only=True)
    if os.path.isdir(a.corpus):
        docs = [open(os.path.join(a.corpus, n), encoding="utf-8").read().strip()
                for n in sorted(os.listdir(a.corpus)) if n.endswith(".txt")]
        docs = [d for d in docs if d]
    else:
        text = open(a.corpus, encoding="utf-8").read()
        docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    if a.sentences:
        return sentences(a, tok, docs)
    ids = []
    for d in docs:
        ids.extend(tok(d)["input_ids"])
        if not a.no_eos and tok.eos_token_id is not None:
            ids.append(tok.eos_token_id)
    bos = adds_bos(tok) and not a.no_bos_windows
    arr = bos_windows(ids, a.seq_len, tok.bos_token_id, a.samples) if bos else plain_windows(ids, a.seq_len, a.samples)
    if len(arr) == 0:
        raise SystemExit(f"{a.corpus}: {len(ids)} tokens, fewer than one window of {a.seq_len}")
    tmp = a.out + ".tmp"
    with h5py.File(tmp, "w") as f:
        f["input_ids"] = arr
        f.attrs["tokenizer"] = os.path.abspath(a.model_dir)
        f.attrs["corpus"] = os.path.abspath(a.corpus)
        f.attrs["bos_windows"] = int(bos)
    os.replace(tmp, a.out)
    print(f"wrote {a.out}: {len(arr)} samples x {a.seq_len} tokens from {len(docs)} documents ({len(ids)} tokens)"
          + (", each window led by BOS" if bos else ""))


def plain_windows(ids, seq_len, samples):
    windows = len(ids) // seq_len
    if samples:
        windows = min(windows, samples)
    return np.asarray(ids[: windows * seq_len], dtype=np.int32).reshape(windows, seq_len)


def bos_windows(ids, seq_len, bos, samples):
    """Consecutive windows that each start with BOS: BOS and the next seq_len - 1 tokens, or, where the next
    token is a document's own BOS, the seq_len tokens from it (never BOS twice)."""
    out, pos = [], 0
    while not samples or len(out) < samples:
        if pos < len(ids) and ids[pos] == bos:
            w = ids[pos:pos + seq_len]
        else:
            w = [bos] + ids[pos:pos + seq_len - 1]
        if len(w) < seq_len:
            break
        pos += seq_len if ids[pos] == bos else seq_len - 1
        out.append(w)
    return np.asarray(out, dtype=np.int32).reshape(len(out), seq_len)


def adds_bos(tok):
    """Whether the tokenizer puts its BOS token in front of a text (what the model was trained on)."""
    if tok.bos_token_id is None:
        return False
    ids = tok("a")["input_ids"]
    return len(ids) > 0 and ids[0] == tok.bos_token_id


def sentences(a, tok, docs):
    found = []
    for d in docs:
        for paragraph in re.split(r"\n\s*\n", d):
            text = " ".join(paragraph.split())
            for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                if 5 <= len(sent.split()) <= 80:
                    found.append(sent)
    found = sorted(set(found))  # the same sentence twice is one sample
    random.Random(a.seed).shuffle(found)
    if a.samples:
        found = found[: a.samples]
    if not found:
        raise SystemExit(f"{a.corpus}: no sentence of 5 to 80 words")
    enc = tok(found, padding="max_length", truncation=True, max_length=a.seq_len)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    mask = np.asarray(enc["attention_mask"], dtype=np.int32)
    tmp = a.out + ".tmp"
    with h5py.File(tmp, "w") as f:
        f["input_ids"] = ids
        f["attention_mask"] = mask
        f.attrs["tokenizer"] = os.path.abspath(a.model_dir)
        f.attrs["corpus"] = os.path.abspath(a.corpus)
    os.replace(tmp, a.out)
    print(f"wrote {a.out}: {len(found)} sentences, {int(mask.sum())} tokens in windows of {a.seq_len} "
          f"({int((mask.sum(1) == a.seq_len).sum())} truncated)")


if __name__ == "__main__":
    main()
