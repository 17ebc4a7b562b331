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


def test_corpus_to_token_h5(tmp_path):
    corpus = "\n\n".join(f"document {i} says the quick brown fox jumps over the lazy dog {i % 7} times"
                         for i in range(40))
    (tmp_path / "corpus.txt").write_text(corpus)
    model = tmp_path / "model"
    model.mkdir()
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    bpe.train_from_iterator([corpus], tokenizers.trainers.BpeTrainer(vocab_size=120,
                                                                      special_tokens=["<unk>", "<s>", "</s>"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(model)

    subprocess.run([sys.executable, SCRIPT, model, tmp_path / "corpus.txt", tmp_path / "tokens.h5", "--seq-len", "16"],
                   check=True)
    expected = []
    for doc in corpus.split("\n\n"):
        expected += fast(doc)["input_ids"] + [fast.eos_token_id]
    with h5py.File(tmp_path / "tokens.h5") as f:
        ids = f["input_ids"][:]
    assert ids.dtype == np.int32 and ids.shape == (len(expected) // 16, 16)
    assert (ids.reshape(-1) == np.asarray(expected[: ids.size])).all()
