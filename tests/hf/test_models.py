"""Our LLaMA and ViT forward passes against transformers' own models on the same checkpoints.

fp32: max |ours - theirs| <= 1e-4 * max |logit|.
bf16: relative L2 error ||ours - theirs|| / ||theirs|| <= 2e-2, and max |ours - theirs| <= 5e-2 * max |logit|.
The bf16 bound is on the L2 error because the max error sits at bf16's noise floor: transformers' own bf16
logits are about 1e-2 * max |logit| away from fp32 math on the same weights (printed by the test), so a
max-error bound of 2e-2 would fail on noise, while a real bug (RoPE, mask, GQA) moves the L2 error by O(1).
Padded positions (attention_mask == 0) carry no meaning and are not compared.
"""
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

FP32_TOL = 1e-4
BF16_L2_TOL = 2e-2
BF16_MAX_TOL = 5e-2

LLAMA_VARIANTS = {
    # name: (config kwargs, legacy rope keys in config.json)
    "gqa4_tied": (dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True), False),
    "gqa2_untied": (dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False), False),
    "llama3_rope": (dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 32}), False),
    "llama3_rope_legacy_keys": (dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                                     rope_theta=500000.0,
                                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
                                True),
    "biases": (dict(num_attention_heads=4, num_key_value_heads=4, attention_bias=True, mlp_bias=True), False),
}


def make_llama(path, name, dtype=torch.float32, shard=None):
    kwargs, legacy = LLAMA_VARIANTS[name]
    torch.manual_seed(hash(name) % 1000)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                      head_dim=16, max_position_embeddings=256, initializer_range=0.1, **kwargs)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    if legacy:  # rewrite rope_parameters as the pre-v5 keys users' checkpoints carry
        cfg = json.load(open(path / "config.json"))
        rope = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rope.pop("rope_theta")
        cfg["rope_scaling"] = rope
        json.dump(cfg, open(path / "config.json", "w"), indent=2)
    return model.to(dtype)


def token_batch(vocab, batch=3, length=19, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, -5:] = 0  # right padding
    mask[2, :4] = 0   # left padding
    return ids, mask


def run_forward(cli, model_dir, tmp_path, inputs, dtype):
    save_file(inputs, tmp_path / "in.safetensors")
    cli("forward", model_dir, "--inputs", tmp_path / "in.safetensors", "--output", tmp_path / "out.safetensors",
        "--dtype", dtype, "--threads", "1")
    return load_file(tmp_path / "out.safetensors")


def compare(ours, theirs, dtype, label, where=None, reference=None):
    """Asserts the tolerances above; `reference` (fp32 math on the same weights) is only printed."""
    ours, theirs = ours.float(), theirs.float()
    assert ours.shape == theirs.shape, f"{label}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    if where is not None:
        ours, theirs = ours[where], theirs[where]
        reference = reference[where] if reference is not None else None
    scale = theirs.abs().max().item()
    max_rel = (ours - theirs).abs().max().item() / scale
    l2_rel = ((ours - theirs).norm() / theirs.norm()).item()
    line = f"{label}: max |diff| / max |logit| = {max_rel:.3e}, L2 relative = {l2_rel:.3e}"
    if reference is not None:
        ref_scale = reference.float().abs().max().item()
        line += (f"; vs fp32 math: ours {(ours - reference).abs().max().item() / ref_scale:.3e}, "
                 f"transformers {(theirs - reference).abs().max().item() / ref_scale:.3e}")
    print(line)
    if dtype == "fp32":
        assert max_rel <= FP32_TOL, line
    else:
        assert l2_rel <= BF16_L2_TOL and max_rel <= BF16_MAX_TOL, line


@pytest.mark.parametrize("variant", list(LLAMA_VARIANTS))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_llama_logits_match_transformers(tmp_path, cli, variant, dtype):
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    model = make_llama(tmp_path / "model", variant, torch_dtype)
    compare_causal_lm(cli, model, tmp_path / "model", tmp_path, dtype, f"llama {variant}")


def compare_causal_lm(cli, model, model_dir, tmp_path, dtype, name):
    """Our logits against transformers' causal LM (saved in model_dir, loaded in `dtype`), with right and
    left padding and without a mask; in bf16 the fp32 math on the same weights is printed beside."""
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    ids, mask = token_batch(model.config.vocab_size)
    for label, inputs, where in ((f"{name} {dtype} padded", {"input_ids": ids, "attention_mask": mask}, mask.bool()),
                                 (f"{name} {dtype}", {"input_ids": ids}, None)):
        with torch.no_grad():
            theirs = model(**inputs).logits
            reference = model.float()(**inputs).logits if dtype == "bf16" else None
            model.to(torch_dtype)
        ours = run_forward(cli, model_dir, tmp_path, inputs, dtype)["logits"]
        compare(ours, theirs, dtype, label, where, reference)


VIT_VARIANTS = {
    "cls32_patch8": dict(image_size=32, patch_size=8, hidden_size=48, num_attention_heads=4, intermediate_size=96,
                         num_hidden_layers=2, num_labels=10),
    "cls224_patch16": dict(image_size=224, patch_size=16, hidden_size=64, num_attention_heads=4,
                           intermediate_size=128, num_hidden_layers=2, num_labels=7),
    "cls32_no_qkv_bias": dict(image_size=32, patch_size=8, hidden_size=48, num_attention_heads=3,
                              intermediate_size=64, num_hidden_layers=2, num_labels=5, qkv_bias=False),
}


def make_vit(path, name, dtype=torch.float32, cls=None):
    torch.manual_seed(len(name))
    config = transformers.ViTConfig(initializer_range=0.1, **VIT_VARIANTS[name])
    model = (cls or transformers.ViTForImageClassification)(config).eval()
    model.save_pretrained(path)
    return model.to(dtype)


@pytest.mark.parametrize("variant", list(VIT_VARIANTS))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_vit_logits_match_transformers(tmp_path, cli, variant, dtype):
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    model = make_vit(tmp_path / "model", variant, torch_dtype)
    size = model.config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = model(pixel_values=pixels.to(torch_dtype)).logits
        reference = model.float()(pixel_values=pixels.to(torch_dtype).float()).logits if dtype == "bf16" else None
    ours = run_forward(cli, tmp_path / "model", tmp_path, {"pixel_values": pixels}, dtype)["logits"]
    compare(ours, theirs, dtype, f"vit {variant} {dtype}", reference=reference)


def test_vit_model_with_pooler(tmp_path, cli):
    model = make_vit(tmp_path / "model", "cls32_patch8", cls=transformers.ViTModel)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = model(pixel_values=pixels)
    ours = run_forward(cli, tmp_path / "model", tmp_path, {"pixel_values": pixels}, "fp32")
    compare(ours["last_hidden_state"], theirs.last_hidden_state, "fp32", "vit model last_hidden_state")
    compare(ours["pooler_output"], theirs.pooler_output, "fp32", "vit model pooler_output")


def assert_loads_cleanly(auto_cls, path):
    model, info = auto_cls.from_pretrained(path, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[key], f"{key}: {info[key]}"
    return model.eval()


def tensors_of(path):
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    out = {}
    for f in files:
        with safe_open(os.path.join(path, f), framework="pt") as st:
            for k in st.keys():
                out[k] = (f, st.get_tensor(k))
    return out


@pytest.mark.parametrize("shard", [None, "20KB"])
def test_llama_keep_all_export_is_identical(tmp_path, cli, shard):
    src, dst = tmp_path / "model", tmp_path / "export"
    make_llama(src, "gqa4_tied", torch.bfloat16, shard=shard)
    (src / "tokenizer_config.json").write_text('{"model_max_length": 256}')
    cli("export", "--keep-all", src, dst)
    a, b = tensors_of(src), tensors_of(dst)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][0] == b[k][0], f"{k} moved from {a[k][0]} to {b[k][0]}"
        assert a[k][1].dtype == b[k][1].dtype and torch.equal(a[k][1].view(torch.uint8), b[k][1].view(torch.uint8)), k
    assert json.load(open(src / "config.json")) == json.load(open(dst / "config.json"))
    assert (dst / "tokenizer_config.json").read_text() == '{"model_max_length": 256}'
    original = assert_loads_cleanly(transformers.AutoModelForCausalLM, src)
    exported = assert_loads_cleanly(transformers.AutoModelForCausalLM, dst)
    ids, mask = token_batch(original.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(original(input_ids=ids, attention_mask=mask).logits,
                           exported(input_ids=ids, attention_mask=mask).logits)
    # Refuses to overwrite.
    p = cli("export", "--keep-all", src, dst, check=False)
    assert p.returncode == 1 and "already exists" in p.stderr


def test_vit_keep_all_export_resharded(tmp_path, cli):
    src, dst = tmp_path / "model", tmp_path / "export"
    make_vit(src, "cls32_patch8")
    cli("export", "--keep-all", src, dst, "--max-shard-size", "30000")
    assert os.path.exists(dst / "model.safetensors.index.json")
    a, b = tensors_of(src), tensors_of(dst)
    assert a.keys() == b.keys() and all(torch.equal(a[k][1], b[k][1]) for k in a)
    original = assert_loads_cleanly(transformers.AutoModelForImageClassification, src)
    exported = assert_loads_cleanly(transformers.AutoModelForImageClassification, dst)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(original(pixel_values=pixels).logits, exported(pixel_values=pixels).logits)


def test_fp16_weights_computed_in_fp32(tmp_path, cli):
    """Weights stored in fp16 are converted on load; the reference is transformers in fp32 on the same values."""
    make_llama(tmp_path / "model", "gqa2_untied", torch.float16).save_pretrained(tmp_path / "model")  # in fp16
    assert json.load(open(tmp_path / "model" / "config.json"))["dtype"] == "float16"
    # A fresh fp32 load: converting the in-memory fp16 model back with .float() would also carry its
    # RoPE inv_freq buffer, which .to(float16) rounded.
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
    ids, mask = token_batch(model.config.vocab_size)
    with torch.no_grad():
        theirs = model(input_ids=ids, attention_mask=mask).logits
    ours = run_forward(cli, tmp_path / "model", tmp_path, {"input_ids": ids, "attention_mask": mask}, "fp32")["logits"]
    compare(ours, theirs, "fp32", "llama fp16 weights, fp32 compute", mask.bool())


def test_vit_position_embeddings_unlike_config(tmp_path, cli):
    src = tmp_path / "model"
    make_vit(src, "cls32_patch8")
    cfg = json.load(open(src / "config.json"))
    json.dump({**cfg, "image_size": 64}, open(src / "config.json", "w"))
    save_file({"pixel_values": torch.zeros(1, 3, 64, 64)}, tmp_path / "px.safetensors")
    p = cli("forward", src, "--inputs", tmp_path / "px.safetensors", "--output", tmp_path / "o.safetensors", check=False)
    assert p.returncode == 1 and "CheckpointError" in p.stderr
    assert "'vit.embeddings.position_embeddings' has shape [1, 17, 48], config.json implies [1, 65, 48]" in p.stderr


def test_config_inconsistent_with_weights(tmp_path, cli):
    src = tmp_path / "model"
    make_llama(src, "gqa2_untied")
    save_file({"input_ids": torch.zeros(1, 4, dtype=torch.long)}, tmp_path / "in.safetensors")
    args = ("forward", src, "--inputs", tmp_path / "in.safetensors", "--output", tmp_path / "out.safetensors")

    cfg = json.load(open(src / "config.json"))
    json.dump({**cfg, "intermediate_size": 128}, open(src / "config.json", "w"))
    p = cli(*args, check=False)
    assert p.returncode == 1 and "CheckpointError" in p.stderr
    assert "'model.layers.0.mlp.gate_proj.weight' has shape [96, 64], config.json implies [128, 64]" in p.stderr

    json.dump(cfg, open(src / "config.json", "w"))
    weights = load_file(src / "model.safetensors")
    del weights["model.layers.2.self_attn.v_proj.weight"]
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    p = cli(*args, check=False)
    assert p.returncode == 1 and "missing tensor 'model.layers.2.self_attn.v_proj.weight'" in p.stderr
    assert "[32, 64]" in p.stderr

    json.dump({**cfg, "model_type": "gpt2"}, open(src / "config.json", "w"))
    p = cli(*args, check=False)
    assert p.returncode == 1 and "'gpt2'" in p.stderr
    assert "gemma3_text, gpt_neox, llama, mistral, phi3, qwen2, qwen3, vit" in p.stderr


def test_bad_inputs_name_file_and_tensor(tmp_path, cli):
    src = tmp_path / "model"
    make_llama(src, "gqa2_untied")
    cases = {
        "out_of_vocab": ({"input_ids": torch.tensor([[1, 300]])}, "token id 300 outside the vocabulary [0, 300)"),
        "float_ids": ({"input_ids": torch.zeros(1, 3)}, "tensor 'input_ids': expected I64"),
        "rank3": ({"input_ids": torch.zeros(1, 2, 3, dtype=torch.long)}, "tensor 'input_ids': expected I64"),
        "mask_shape": ({"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 4)},
                       "tensor 'attention_mask'"),
        "nothing": ({"x": torch.zeros(1)}, "neither 'input_ids' nor 'pixel_values'"),
    }
    for name, (inputs, message) in cases.items():
        save_file(inputs, tmp_path / f"{name}.safetensors")
        p = cli("forward", src, "--inputs", tmp_path / f"{name}.safetensors", "--output", tmp_path / "o.safetensors",
                check=False)
        assert p.returncode == 1 and "DataError" in p.stderr, (name, p.stderr)
        assert message in p.stderr and f"{name}.safetensors" in p.stderr, (name, p.stderr)
    vit = tmp_path / "vit"
    make_vit(vit, "cls32_patch8")
    save_file({"pixel_values": torch.zeros(1, 3, 64, 64)}, tmp_path / "px.safetensors")
    p = cli("forward", vit, "--inputs", tmp_path / "px.safetensors", "--output", tmp_path / "o.safetensors", check=False)
    assert p.returncode == 1 and "pixel_values has shape [1, 3, 64, 64]" in p.stderr and "32, 32]" in p.stderr
