# Stands in for llama.cpp's converter in the config fixtures (valid/full.toml: export.llama_cpp); never run.
