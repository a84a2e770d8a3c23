#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one call (about 10 minutes on one H100/H200): the GPU tests, the
# GPNN and CAMERAS benchmarks on CUDA, and the CAMERAS paper protocol on the bundled photos on CUDA.
# Run from a checkout whose environment is installed (`pip install -e '.[dev]'`); results go to
# ${OUT:-gpu_results}/ (one text file per step, and the protocol's run folder).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_results}"
mkdir -p "$out"
py="${PYTHON:-python}"

"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())" \
    | tee "$out/device.txt"
"$py" -m pytest -q tests/test_gpu.py tests/test_triton_nn.py tests/test_gpnn.py 2>&1 | tee "$out/tests.txt"
"$py" benchmarks/gpnn_speed.py --sizes 64 128 224 --tf32 --cam-variations 0 2>&1 | tee "$out/gpnn.txt"
"$py" benchmarks/gpnn_speed.py --sizes 224 --cam-variations 100 2>&1 | tee "$out/gpnn_cam.txt"
"$py" benchmarks/cameras_speed.py --device cuda 2>&1 | tee "$out/cameras.txt"
/usr/bin/time -f "paper protocol wall time: %e s" "$py" -m evaluation.cli evaluate --protocol cameras-paper \
    --model efficientnet-lite0 --data photos --device cuda --quiet --out "$out/paper" 2>&1 | tee "$out/paper.txt"
