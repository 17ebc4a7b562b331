"""launch/prepare_tokens.py: a corpus tokenised with the model's own tokenizer into tokens_h5, which the
pipeline then caches. The tokenizer is trained here with `tokenizers` (nothing is downloaded)."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "launch", "prepare_tokens.py")


def bpe_model(tmp_path, corpus, bos_template=False):
    """corpus.txt and a model directory holding a BPE tokenizer trained on it (BOS in front of every text with
    bos_template, as Gemma's and LLaMA's tokenizers do)."""
    (tmp_path / "corpus.txt").write_text(corpus)
    model = tmp_path / "model"
    model.mkdir()
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    bpe.train_from_iterator([corpus], tokenizers.trainers.BpeTrainer(vocab_size=120,
                                                                      special_tokens=["<unk>", "<s>", "</s>"]))
    if bos_template:
        bpe.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(model)
    return model, fast


def test_corpus_to_token_h5(tmp_path):
    corpus = "\n\n".join(f"document {i} says the quick brown fox jumps over the lazy dog {i % 7} times"
                         for i in range(40))
    model, fast = bpe_model(tmp_path, corpus)

    subprocess.run([sys.executable, SCRIPT, model, tmp_path / "corpus.txt", tmp_path / "tokens.h5", "--seq-len", "16"],
                   check=True)
    expected = []
    for doc in corpus.split("\n\n"):
        expected += fast(doc)["input_ids"] + [fast.eos_token_id]
    with h5py.File(tmp_path / "tokens.h5") as f:
        ids = f["input_ids"][:]
    assert ids.dtype == np.int32 and ids.shape == (len(expected) // 16, 16)
    assert (ids.reshape(-1) == np.asarray(expected[: ids.size])).all()


def test_windows_start_with_bos_when_the_tokenizer_adds_one(tmp_path):
    """A tokenizer that adds BOS (Gemma, LLaMA): every window starts with BOS, once: BOS + the next seq_len - 1
    tokens of the stream, or seq_len tokens from a document's own BOS; --no-bos-windows cuts the stream plainly."""
    corpus = "\n\n".join(f"document {i} says the quick brown fox jumps over the lazy dog {i % 7} times"
                          for i in range(40))
    model, fast = bpe_model(tmp_path, corpus, bos_template=True)
    stream = []
    for doc in corpus.split("\n\n"):
        stream += fast(doc)["input_ids"] + [fast.eos_token_id]
    assert stream[0] == fast.bos_token_id
    subprocess.run([sys.executable, SCRIPT, model, tmp_path / "corpus.txt", tmp_path / "bos.h5", "--seq-len", "16"],
                   check=True)
    with h5py.File(tmp_path / "bos.h5") as f:
        ids = f["input_ids"][:]
        assert f.attrs["bos_windows"] == 1
    bos = fast.bos_token_id
    assert (ids[:, 0] == bos).all() and not (ids[:, 1] == bos).any()  # BOS first, never twice
    # The windows follow the stream: BOS + the next 15 tokens, or the 16 from a document's own BOS.
    pos, own = 0, 0
    for w in ids:
        if stream[pos] == bos:
            assert list(w) == stream[pos:pos + 16]
            pos, own = pos + 16, own + 1
        else:
            assert list(w) == [bos] + stream[pos:pos + 15]
            pos += 15
    assert own > 0 and len(stream) - pos < 16  # some windows start at a document; all the stream is cut
    subprocess.run([sys.executable, SCRIPT, model, tmp_path / "corpus.txt", tmp_path / "plain.h5", "--seq-len", "16",
                    "--no-bos-windows"], check=True)
    with h5py.File(tmp_path / "plain.h5") as f:
        plain = f["input_ids"][:]
    assert (plain.reshape(-1) == np.asarray(stream[: plain.size])).all()


def test_sentences_padded_with_attention_mask(tmp_path):
    """--sentences: one sample per sentence (5 to 80 words), tokenised alone, padded, with attention_mask."""
    text = ("The quick brown fox jumps over the lazy dog. Too short. A second sentence with enough words in it!\n\n"
            "Another paragraph starts here and goes on for a while. The quick brown fox jumps over the lazy dog.")
    (tmp_path / "corpus.txt").write_text(text)
    model = tmp_path / "model"
    model.mkdir()
    wp = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    wp.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    wp.train_from_iterator([text], tokenizers.trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    wp.post_processor = tokenizers.processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=wp, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]")
    fast.save_pretrained(model)
    subprocess.run([sys.executable, SCRIPT, model, tmp_path / "corpus.txt", tmp_path / "s.h5", "--seq-len", "12",
                    "--sentences"], check=True)
    with h5py.File(tmp_path / "s.h5") as f:
        ids, mask = f["input_ids"][:], f["attention_mask"][:]
    # Three distinct sentences of 5+ words (the repeated one once, "Too short." dropped).
    assert ids.shape == mask.shape == (3, 12)
    assert (ids[:, 0] == 2).all() and (ids[mask == 0] == 0).all()
    lengths = mask.sum(1)
    for row, n in zip(ids, lengths):
        assert row[n - 1] == 3 or n == 12  # [SEP] ends every sentence that fits
    decoded = sorted(fast.decode(r[1:n - 1]) for r, n in zip(ids, lengths))
    assert "The quick brown fox jumps over the lazy dog ." in decoded
