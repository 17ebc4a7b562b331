"""make-model and make-data: the directories load in transformers with no missing or unexpected keys
and give the same logits as our forward; data is deterministic and fits the model; every example
config passes `validate` once its paths point at real files.
"""
import json
import os
import re
import shutil

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# google/gemma-3-270m's count (tied embeddings): 262,144 x 640 of them are the embedding.
GEMMA3_270M_PARAMETERS = 268098176


def loaded(cls, path):
    model, info = cls.from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def ours(cli, model_dir, tmp_path, inputs, output="logits"):
    save_file(inputs, tmp_path / "in.safetensors")
    cli("forward", model_dir, "--inputs", tmp_path / "in.safetensors", "--output", tmp_path / "out.safetensors")
    return load_file(tmp_path / "out.safetensors")[output]


@pytest.mark.parametrize("arch,preset", [("llama", "tiny"), ("gemma3_text", "tiny"), ("gemma3_text", "gemma-3-270m"),
                                         ("phi3", "tiny"), ("gpt_neox", "tiny"), ("vit", "tiny"), ("vit", "vit-base-patch16-224"), ("bert", "tiny")])
def test_make_model_loads_in_transformers_and_matches(cli, tmp_path, arch, preset):
    out = tmp_path / "model"
    cli("make-model", "--arch", arch, "--preset", preset, "--seed", "3", out)
    data = tmp_path / "data.h5"
    cli("make-data", out, "--samples", "3", "--seq-len", "12", "--seed", "1", data)
    output = "logits"
    with h5py.File(data) as f:
        if arch == "bert":
            ids = torch.from_numpy(f["input_ids"][:]).long()
            model = loaded(transformers.BertModel, out)
            assert ids.shape == (3, 12) and 0 <= ids.min() and ids.max() < model.config.vocab_size
            inputs = {"input_ids": ids}
            output = "last_hidden_state"
            with torch.no_grad():
                theirs = model(input_ids=ids).last_hidden_state
        elif arch in ("llama", "gemma3_text", "phi3", "gpt_neox"):
            ids = torch.from_numpy(f["input_ids"][:]).long()
            model = loaded(transformers.AutoModelForCausalLM, out)
            assert ids.shape == (3, 12) and 0 <= ids.min() and ids.max() < model.config.vocab_size
            inputs = {"input_ids": ids}
            with torch.no_grad():
                theirs = model(input_ids=ids).logits
        else:
            px = f["pixel_values"][:]
            assert px.dtype == np.uint8 and px.shape[1:] == (3, 32, 32) if preset == "tiny" else px.shape[1:] == (3, 224, 224)
            model = loaded(transformers.AutoModelForImageClassification, out)
            pixels = torch.from_numpy(px).float() / 255 * 2 - 1  # preprocessor: rescale, mean 0.5, std 0.5
            inputs = {"pixel_values": pixels}
            with torch.no_grad():
                theirs = model(pixel_values=pixels).logits
    rel = (ours(cli, out, tmp_path, inputs, output) - theirs).abs().max() / theirs.abs().max()
    assert rel < 1e-4, rel
    if preset == "vit-base-patch16-224":
        assert model.num_parameters() == 86567656  # google/vit-base-patch16-224's count
    if preset == "gemma-3-270m":
        assert model.num_parameters() == GEMMA3_270M_PARAMETERS
    # Same seed, same bytes; refuses to overwrite.
    again = tmp_path / "again"
    cli("make-model", "--arch", arch, "--preset", preset, "--seed", "3", again)
    for f in os.listdir(out):
        assert (out / f).read_bytes() == (again / f).read_bytes(), f
    assert cli("make-model", "--arch", arch, "--preset", preset, out, check=False).returncode == 1


def test_make_model_rejects_unknown_preset(cli, tmp_path):
    p = cli("make-model", "--arch", "llama", "--preset", "llama-70b", tmp_path / "m", check=False)
    assert p.returncode == 2 and "llama-3.2-1b" in p.stderr


def recipe_arch(name):
    for key, arch in (("vit", "vit"), ("minilm", "bert"), ("gemma", "gemma3_text"), ("phi", "phi3"), ("pythia", "gpt_neox")):
        if key in name:
            return arch
    return "llama"


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".toml")))
def test_example_configs_validate_once_paths_are_given(cli, tmp_path, name):
    model = tmp_path / "model"
    cli("make-model", "--arch", recipe_arch(name), "--preset", "tiny", model)
    data = tmp_path / "data.h5"
    cli("make-data", model, "--samples", "4", "--seq-len", "8", data)
    text = open(os.path.join(REPO, "configs", name)).read()
    text = re.sub(r'(\[model\][^\[]*?path = )"[^"]*"', rf'\1"{model}"', text, flags=re.S)
    text = re.sub(r'(\[data\][^\[]*?path = )"[^"]*"', rf'\1"{data}"', text, flags=re.S)
    text = re.sub(r'(\[(?:evaluate|heal)\][^\[]*?data = )"[^"]*"', rf'\1"{data}"', text, flags=re.S)
    cfg = tmp_path / name
    cfg.write_text(text)
    p = cli("validate", cfg)
    assert f'path = "{model}"' in p.stdout and f'path = "{data}"' in p.stdout


def test_make_data_leads_with_bos_when_the_tokenizer_adds_one(cli, tmp_path):
    """A model whose tokenizer_config.json says add_bos_token (Gemma's) gets sequences that start with BOS,
    as it was trained on; without it, none are forced; a broken tokenizer_config.json is refused by name."""
    model = tmp_path / "model"
    cli("make-model", "--arch", "llama", "--preset", "tiny", model)
    cli("make-data", model, "--samples", "64", "--seq-len", "8", tmp_path / "plain.h5")
    (model / "tokenizer_config.json").write_text('{"add_bos_token": true, "bos_token": "<s>"}')
    cli("make-data", model, "--samples", "64", "--seq-len", "8", tmp_path / "bos.h5")
    bos = json.load(open(model / "config.json"))["bos_token_id"]
    with h5py.File(tmp_path / "plain.h5") as f, h5py.File(tmp_path / "bos.h5") as g:
        plain, led = f["input_ids"][:], g["input_ids"][:]
    assert (led[:, 0] == bos).all() and not (plain[:, 0] == bos).all()
    assert (led[:, 1:] == plain[:, 1:]).all()
    (model / "tokenizer_config.json").write_text('{"add_bos_token": tru')
    p = cli("make-data", model, "--samples", "4", "--seq-len", "8", tmp_path / "bad.h5", check=False)
    assert p.returncode != 0 and "tokenizer_config.json" in p.stderr
