"""The one fix-up our GGUF files need after llama.cpp's converter (issue 36): Gemma 3's per-layer attention
pattern. convert_hf_to_gguf.py (llama.cpp in llama-cpp-python 0.3.36) writes no per-layer pattern for Gemma 3,
and llama.cpp then takes every 6th layer as global (full attention, the global RoPE base): wrong once an export
dropped blocks. add_layer_pattern rewrites the file with {arch}.attention.sliding_window_pattern from
config.json's layer_types (which llama.cpp reads first).

Kept in this one file: the pipeline embeds it at build time (runtimes/CMakeLists.txt) and runs it with
export.python as `python -c <this file> GGUF CONFIG_JSON`; bench/llamacpp.py imports add_layer_pattern.
"""
import json
import os
import sys


def add_layer_pattern(path, sliding):
    """Rewrites the GGUF at `path` with the per-layer pattern `sliding` (True: sliding-window layer), unless
    the file has one already."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    key = gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch)
    if key in reader.fields:
        return
    writer = gguf.GGUFWriter(path + ".partial", arch=arch, endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, {key: MetadataDetails(gguf.GGUFValueType.ARRAY, sliding)}, [])
    os.replace(path + ".partial", path)


def main(argv):
    path, config_json = argv
    with open(config_json) as f:
        config = json.load(f)
    add_layer_pattern(path, [t == "sliding_attention" for t in config["layer_types"]])


if __name__ == "__main__":
    main(sys.argv[1:])
