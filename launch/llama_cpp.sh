#!/usr/bin/env bash
# llama.cpp's CPU tools, for checking our exports as GGUF files (bench/llamacpp.py; issue 36).
#
#     bash launch/llama_cpp.sh            # JOBS=N (default 2) sets the build's parallelism
#
# Idempotent. The source is the llama.cpp vendored in the PyPI sdist of llama-cpp-python (PyPI is the
# registry this project reaches; no GitHub download), unpacked under .llama.cpp/src/ and built into
# .llama.cpp/build/ (both outside git). Built: llama-quantize, llama-bench, llama-perplexity and
# llama-completion (the classic llama-cli: raw prompt, greedy with --temp 0).
#
# Portable x86-64 flags: GGML_NATIVE=OFF, SSE4.2 + AVX + AVX2 + FMA + F16C and nothing newer (no BMI2,
# AVX-VNNI, AVX512 or AMX; -march=native on an AMX machine gave SIGILL in quantized types elsewhere), so
# the binaries and their numbers mean the same on every machine of ours. CPU only (GGML_CUDA=OFF even
# where nvcc exists), no HTTPS/curl model download, no tests, examples or server.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
root=$repo/.llama.cpp
py=$repo/.venv/bin/python
src=$root/src/llama_cpp_python-$version/vendor/llama.cpp
[ -x "$py" ] || { echo "llama_cpp.sh: no $py; run launch/setup.sh first" >&2; exit 1; }

if [ ! -f "$src/CMakeLists.txt" ]; then
    sdist=$root/dl/llama_cpp_python-$version.tar.gz
    [ -f "$sdist" ] || "$py" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$root/dl"
    rm -rf "$root/src.partial" && mkdir -p "$root/src.partial" "$root/src"
    tar -xzf "$sdist" -C "$root/src.partial"
    rm -rf "$root/src/llama_cpp_python-$version"
    mv "$root/src.partial/llama_cpp_python-$version" "$root/src/" && rmdir "$root/src.partial"
fi

export CCACHE_BASEDIR=$repo CCACHE_NOHASHDIR=1 \
    CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
cmake -S "$src" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DGGML_CCACHE=OFF \
    -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_BMI2=OFF -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
    -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DGGML_RPC=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    >"$root/configure.log" 2>&1 || { cat "$root/configure.log" >&2; exit 1; }
tools=(llama-quantize llama-bench llama-perplexity llama-completion)
nice -n 19 cmake --build "$root/build" -j "${JOBS:-2}" --target "${tools[@]}"

# The source directory's build/ is this build (a relative link), so export.llama_cpp = "$src" finds llama-quantize
# in its build/bin/ as in a plain `cmake -B build` checkout of llama.cpp.
[ -e "$src/build" ] || [ -L "$src/build" ] || ln -s ../../../../build "$src/build"

# convert_hf_to_gguf.py imports the gguf-py next to it (the same 0.19.0 as launch/requirements.txt) and, for
# every LLaMA model (tokenizer.model or not), sentencepiece: pinned in launch/requirements.txt.
"$py" -c "import sentencepiece" 2>/dev/null ||
    "$py" -m pip install -q "$(grep '^sentencepiece==' "$repo/launch/requirements.txt")"
echo "llama.cpp vendored in llama-cpp-python $version:"
echo "  converter: $src/convert_hf_to_gguf.py"
for t in "${tools[@]}"; do echo "  $t: $root/build/bin/$t"; done
