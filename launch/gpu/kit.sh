#!/usr/bin/env bash
# Builds the GPU kit: the carry folder that a bare GPU machine (PyTorch 2.11 cu130 image, no MPI,
# HDF5, TOML++, no network) needs to run this build of hawada-pipeline. Run it here, after
# launch/setup.sh built with CUDA (the pinned torch wheel is cu130, so the normal build is the CUDA build):
#
#   bash launch/gpu/kit.sh [KIT_DIR]        # default .gpukit (git-ignored), at most 60 MiB
#
# What goes in:
#   bin/    hawada-pipeline, test_nccl, test_communicator (stripped, RUNPATH $ORIGIN/../lib), mpirun, orted
#   lib/    every shared library they, Open MPI's and PMIx's plugins need that is not glibc, libstdc++
#           or LibTorch/CUDA (those come from the machine's own torch 2.11, the same version)
#   ompi/   OPAL_PREFIX tree: Open MPI's plugins, help files; PMIx's plugins
#   env.sh  source it: LD_LIBRARY_PATH (kit, then the machine's torch and nvidia wheel libraries),
#           OPAL_PREFIX, component paths, PATH
# Then it checks the kit the way the GPU machine will see it: under `env -i` with only env.sh, with
# the system's Open MPI and PMIx hidden (a private mount namespace), every library resolves and
# `mpirun -np 2 test_communicator` passes.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${HAWADA_BUILD_DIR:-$repo/build}
kit=${1:-$repo/.gpukit}
venv=$repo/.venv
multiarch=x86_64-linux-gnu
say() { printf '== %s\n' "$*"; }

cli=$build/pipeline/hawada-pipeline
[ -x "$cli" ] || { echo "kit.sh: $cli not built; run launch/setup.sh first" >&2; exit 1; }
# read ldd into a variable first: `ldd | grep -q` under pipefail fails at random when grep
# exits before ldd is done writing (SIGPIPE), which made this check flaky.
cli_libs=$(ldd "$cli")
if ! grep -q 'libnccl' <<<"$cli_libs"; then
  echo "kit.sh: $cli was built without CUDA/NCCL (the torch wheel in .venv has no CUDA?); the kit needs the CUDA build" >&2
  exit 1
fi
command -v patchelf >/dev/null || { echo "kit.sh: patchelf missing (launch/setup.sh installs it)" >&2; exit 1; }

rm -rf "$kit"
mkdir -p "$kit/bin" "$kit/lib"
ompi_lib=/usr/lib/$multiarch/openmpi/lib
ompi=$kit/ompi
mkdir -p "$ompi/bin" "$ompi/lib/$multiarch/openmpi/lib" "$ompi/share" "$ompi/lib/$multiarch/pmix2/lib"

say "binaries"
for b in "$cli" "$build/tests/gpu/test_nccl" "$build/tests/mpi/test_communicator"; do
  [ -x "$b" ] || { echo "kit.sh: $b not built" >&2; exit 1; }
  cp "$b" "$kit/bin/"
  strip --strip-debug "$kit/bin/$(basename "$b")"
  patchelf --set-rpath '$ORIGIN/../lib' "$kit/bin/$(basename "$b")"
done
cp "$(readlink -f /usr/bin/orterun)" "$ompi/bin/orterun"
cp "$(readlink -f /usr/bin/orted)" "$ompi/bin/orted"
ln -s orterun "$ompi/bin/mpirun"
ln -s ../ompi/bin/orterun "$kit/bin/mpirun"
ln -s ../ompi/bin/orted "$kit/bin/orted"
cp -r "$ompi_lib/openmpi3" "$ompi/lib/$multiarch/openmpi/lib/"
cp -r /usr/lib/$multiarch/pmix2/lib/pmix "$ompi/lib/$multiarch/pmix2/lib/"
cp -r /usr/share/openmpi "$ompi/share/"
[ -d /usr/share/pmix ] && cp -r /usr/share/pmix "$ompi/share/"

say "shared libraries (the closure of ldd, without glibc, libstdc++ and LibTorch/CUDA)"
skip_re='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libresolv\.so|libstdc\+\+|libgcc_s|libcuda\.so|libnvidia|libcudart|libnccl|libnvrtc|libcublas|libcudnn|libnvJitLink|libcusparse|libcufft|libcurand|libcusolver|libnvshmem|libcupti|libtorch|libc10)'
objects=("$kit"/bin/hawada-pipeline "$kit"/bin/test_nccl "$kit"/bin/test_communicator "$ompi"/bin/orterun "$ompi"/bin/orted)
while IFS= read -r f; do objects+=("$f"); done < <(find "$ompi/lib" -name '*.so*' -type f)
declare -A seen=()
queue=("${objects[@]}")
while [ ${#queue[@]} -gt 0 ]; do
  obj=${queue[0]}; queue=("${queue[@]:1}")
  while read -r name path; do
    [ -n "$path" ] && [ -f "$path" ] || continue
    [[ $name =~ $skip_re ]] && continue
    case "$path" in "$venv"/*|*/torch/lib/*|*/nvidia/*|/usr/local/cuda*) continue ;; esac
    [ -n "${seen[$name]:-}" ] && continue
    seen[$name]=1
    cp -L "$path" "$kit/lib/$name"
    queue+=("$kit/lib/$name")
  done < <(LD_LIBRARY_PATH="$ompi_lib:${LD_LIBRARY_PATH:-}" ldd "$obj" 2>/dev/null | awk '/=>/ {print $1, $3}')
done
# The plugins of hwloc are optional (GL/OpenCL/PCI topology): leave them out.
strip --strip-unneeded "$kit"/lib/*.so* 2>/dev/null || true

cat > "$kit/env.sh" <<'ENV'
# Source this file: the runtime environment of the GPU kit (made by launch/gpu/kit.sh).
# LibTorch and the CUDA libraries come from the machine's own torch 2.11 wheel: found through
# HAWADA_TORCH_PYTHON, else `python3`, else the repository's .venv.
hawada_kit=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PATH="$hawada_kit/bin:${PATH:-/usr/local/bin:/usr/bin:/bin}"
hawada_torch_lib=""
for hawada_py in "${HAWADA_TORCH_PYTHON:-}" python3 "$hawada_kit/../.venv/bin/python"; do
  [ -n "$hawada_py" ] || continue
  command -v "$hawada_py" >/dev/null 2>&1 || [ -x "$hawada_py" ] || continue
  hawada_torch_lib=$("$hawada_py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null) && break
  hawada_torch_lib=""
done
if [ -z "$hawada_torch_lib" ]; then
  echo "env.sh: no Python with torch found (set HAWADA_TORCH_PYTHON)" >&2
  return 1 2>/dev/null || exit 1
fi
hawada_site=$(dirname "$(dirname "$hawada_torch_lib")")
hawada_nvidia=""
for d in "$hawada_site"/nvidia/*/lib "$hawada_site"/nvidia/*/*/lib; do
  [ -d "$d" ] && hawada_nvidia="$hawada_nvidia:$d"
done
export LD_LIBRARY_PATH="$hawada_kit/lib:$hawada_torch_lib$hawada_nvidia${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OPAL_PREFIX="$hawada_kit/ompi"
export OMPI_MCA_mca_base_component_path="$hawada_kit/ompi/lib/x86_64-linux-gnu/openmpi/lib/openmpi3"
export PMIX_MCA_mca_base_component_path="$hawada_kit/ompi/lib/x86_64-linux-gnu/pmix2/lib/pmix"
export PMIX_INSTALL_PREFIX="$hawada_kit/ompi" PMIX_MCA_pcompress_base_silence_warning=1
# One node, no network: shared memory between ranks; no InfiniBand/UCX probing.
export OMPI_MCA_btl="self,vader" OMPI_MCA_pml="ob1" OMPI_MCA_mtl="^ofi,psm,psm2" OMPI_MCA_btl_vader_single_copy_mechanism="none"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export HAWADA_KIT="$hawada_kit" HAWADA_TORCH_LIB="$hawada_torch_lib"
ENV

size=$(du -sm "$kit" | cut -f1)
say "kit: $kit, $size MiB"
[ "$size" -le 60 ] || { echo "kit.sh: the kit is $size MiB, over the 60 MiB a device call may carry" >&2; exit 1; }

say "checking the kit under env -i, with the system's Open MPI and PMIx hidden"
check=$(cat <<CHECK
set -e
for d in /usr/lib/$multiarch/openmpi /usr/lib/$multiarch/pmix2 /usr/share/openmpi /etc/openmpi; do
  [ -e "\$d" ] && mount -t tmpfs none "\$d"
done
source "$kit/env.sh"
missing=0
for f in "$kit"/bin/* "$kit"/lib/*.so* \$(find "$kit/ompi/lib" -name '*.so*'); do
  if ldd "\$f" 2>/dev/null | grep -q 'not found'; then echo "unresolved in \$f:"; ldd "\$f" | grep 'not found'; missing=1; fi
done
# Nothing may come from this machine's CUDA toolkit (/usr/local): the GPU image has its own.
for f in "$kit"/bin/hawada-pipeline "$kit"/bin/test_nccl; do
  if ldd "\$f" | grep -E '=> /usr/local/'; then echo "\$f resolves a library from /usr/local (not on the GPU image)"; missing=1; fi
done
[ \$missing -eq 0 ] || exit 1
echo "every library resolves (kit, torch wheel, nvidia wheels, system C/C++ runtime)"
hawada-pipeline --version
mpirun -np 2 --oversubscribe test_communicator --gtest_brief=1 > /tmp/hawada-kit-check.log 2>&1 || { cat /tmp/hawada-kit-check.log; exit 1; }
tail -3 /tmp/hawada-kit-check.log
test_nccl --gtest_brief=1 | tail -2
CHECK
)
if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null; then
  env -i HOME=/tmp HAWADA_TORCH_PYTHON="$venv/bin/python" unshare -m bash -c "$check"
else
  echo "(not root: checking without hiding the system Open MPI)"
  env -i HOME=/tmp HAWADA_TORCH_PYTHON="$venv/bin/python" bash -c "$(echo "$check" | grep -v 'mount -t tmpfs')"
fi
say "kit ready: carry '$(realpath --relative-to="$repo" "$kit")' to the GPU machine and run bench/gpu/run.sh there"
