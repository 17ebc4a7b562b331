# Finds every third-party dependency once and decides whether CUDA/NCCL are compiled in.
find_package(Threads REQUIRED)
find_package(MPI REQUIRED COMPONENTS C)
find_package(HDF5 REQUIRED COMPONENTS C)
find_package(tomlplusplus REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 CONFIG REQUIRED)  # the command line (pipeline/cli.cpp)
find_package(PkgConfig REQUIRED)
pkg_check_modules(xxhash REQUIRED IMPORTED_TARGET libxxhash)  # XXH64 of the fingerprints

# LibTorch comes from the pinned `torch` wheel in the project venv (launch/setup.sh passes its
# cmake prefix). Debian's libtorch-dev (1.13, reference BLAS) must not be picked up.
# TORCH_CUDA_ARCH_LIST skips Caffe2's GPU-detection try_run, which fails here (no GPU, and it
# inherits our C++20 as a CUDA dialect nvcc's CMake support does not know). We compile no kernels
# of our own; the list only matters to Caffe2's flags.
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
endif()
find_package(Torch REQUIRED)
if(Torch_VERSION VERSION_LESS 2.4)
  message(FATAL_ERROR "LibTorch ${Torch_VERSION} is too old (found in ${Torch_DIR}); run launch/setup.sh to get the pinned wheel")
endif()

# CUDA + NCCL: on when LibTorch was built with CUDA and NCCL's header and library are found.
set(HAWADA_WITH_CUDA OFF)
if(HAWADA_ENABLE_CUDA AND TARGET torch_cuda)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ENV NCCL_ROOT ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY nccl HINTS ENV NCCL_ROOT ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64 PATH_SUFFIXES lib lib64)
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    set(HAWADA_WITH_CUDA ON)
    add_library(hawada_nccl INTERFACE)
    target_include_directories(hawada_nccl SYSTEM INTERFACE ${NCCL_INCLUDE_DIR})
    target_link_libraries(hawada_nccl INTERFACE ${NCCL_LIBRARY})
  else()
    message(STATUS "LibTorch has CUDA but NCCL was not found: building CPU/MPI only")
  endif()
endif()
message(STATUS "hawada: LibTorch ${Torch_VERSION}, CUDA/NCCL ${HAWADA_WITH_CUDA}")

# hawada::torch: LibTorch as every target links it.
# Workaround: the torch wheel's libtorch.so and libtorch_cpu.so export their own copies of
# std::filesystem functions (e.g. remove_all), and in 2.11 those copies crash (they jump through a null
# pointer). Our binaries must bind std::filesystem to the system libstdc++, so libstdc++ is made the
# first DT_NEEDED entry (this option lands before the objects on the link line), ahead of LibTorch.
add_library(hawada_torch INTERFACE)
add_library(hawada::torch ALIAS hawada_torch)
target_link_libraries(hawada_torch INTERFACE ${TORCH_LIBRARIES})
target_link_options(hawada_torch INTERFACE "LINKER:--push-state,--no-as-needed,-lstdc++,--pop-state")

# hawada::fmt: {fmt} for text, the headers LibTorch ships (its compiled part: core/base/fmt_impl.cpp, in
# hawada::base). Debian's libfmt-dev (9.1) cannot be used beside LibTorch: the wheel's include directory
# carries fmt 12's headers, which shadow Debian's in every translation unit that sees LibTorch, and
# linking Debian's library against them mixes two versions.
find_path(HAWADA_FMT_INCLUDE_DIR fmt/format.h HINTS ${TORCH_INCLUDE_DIRS} NO_DEFAULT_PATH REQUIRED)
add_library(hawada_fmt INTERFACE)
add_library(hawada::fmt ALIAS hawada_fmt)
target_include_directories(hawada_fmt SYSTEM INTERFACE ${HAWADA_FMT_INCLUDE_DIR})
