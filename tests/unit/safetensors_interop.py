"""Python side of the safetensors interoperability test (the reference is the `safetensors` package).

  write DIR          write DIR/python.safetensors with one tensor per dtype, and DIR/raw/<name>.bin
  check FILE RAWDIR  load FILE (written by hawada) and compare every tensor to RAWDIR/<name>.bin
"""
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn, "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16,
    "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32,
    "I64": torch.int64, "U64": torch.uint64, "F64": torch.float64,
}


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def write(out_dir: str) -> None:
    g = torch.Generator().manual_seed(7)
    tensors = {}
    for name, dtype in DTYPES.items():
        size = torch.empty((), dtype=dtype).element_size()
        b = torch.randint(0, 256, (4 * 3 * size,), dtype=torch.uint8, generator=g)
        if dtype == torch.bool:
            b = b % 2
        tensors[f"py.{name}"] = b.view(dtype).reshape(4, 3)
    save_file(tensors, os.path.join(out_dir, "python.safetensors"))
    os.makedirs(os.path.join(out_dir, "raw"), exist_ok=True)
    for name, t in tensors.items():
        with open(os.path.join(out_dir, "raw", name + ".bin"), "wb") as f:
            f.write(raw_bytes(t))


def check(path: str, raw_dir: str) -> int:
    bad = 0
    with safe_open(path, framework="pt") as f:
        if f.metadata() != {"format": "pt"}:
            print(f"metadata is {f.metadata()}, expected {{'format': 'pt'}}")
            bad += 1
        names = list(f.keys())
        for name in names:
            t = f.get_tensor(name)
            want_dtype = DTYPES[name.split(".", 1)[1]]
            with open(os.path.join(raw_dir, name + ".bin"), "rb") as r:
                want = r.read()
            if t.dtype != want_dtype or raw_bytes(t) != want:
                print(f"{name}: dtype {t.dtype} (want {want_dtype}) or bytes differ")
                bad += 1
    if len(names) != len(DTYPES):
        print(f"{len(names)} tensors, expected {len(DTYPES)}")
        bad += 1
    print(f"python safetensors read {len(names)} tensors from {path}: {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        sys.exit(check(sys.argv[2], sys.argv[3]))
