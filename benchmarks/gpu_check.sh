#!/usr/bin/env bash
# GPU check for issue 12: the gpu-marked tests, then the GPU benchmarks, in a few minutes.
#
#   bash benchmarks/gpu_check.sh            # writes benchmarks/results/gpu_*.txt
#   RESULTS=/tmp/out bash benchmarks/gpu_check.sh
#
# Needs one CUDA GPU and the package installed with its `testing` extra. Nothing is downloaded:
# the benchmarks build random weights of the registry architectures.
#   1. pytest -m gpu: SDPA memory-efficient kernels in bf16/fp16 (SAM windows + global grid,
#      SegGPT), bf16 embedding vs the CPU, compiled (CUDA graphs) decoder, SegGPT batched targets
#      with pinned copies, precision "auto" on this GPU, CUDA vs CPU parity.
#   2. SAM ViT-H embedding at batch 1 in bf16 (target <= 20 ms on H100/H200), against
#      transformers bf16 on the same weights; click -> mask, eager and with compile_decoder().
#   3. SegGPT ViT-L: ms per target slice at batch 1 and at the best batch, bf16.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${RESULTS:-benchmarks/results}"
mkdir -p "$RESULTS"
status=0

echo "== GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>/dev/null \
  | tee "$RESULTS/gpu_device.txt" || echo "nvidia-smi not available"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" \
  || exit 2

echo "== gpu tests"
timeout 300 python -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$RESULTS/gpu_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== SAM ViT-H, bf16"
timeout 300 python benchmarks/bench_sam.py --model sam-vit-h --device cuda --precision bf16 \
  --reference-precisions same --repeats 20 --decoder-repeats 50 --compile-decoder 2>&1 \
  | tee "$RESULTS/gpu_bench_sam_vit_h_bf16.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== SegGPT ViT-L, bf16, ms per slice"
timeout 300 python benchmarks/bench_seggpt.py --device cuda --precision bf16 --repeats 3 \
  --batch-sizes 1 2 4 8 16 32 2>&1 | tee "$RESULTS/gpu_bench_seggpt_bf16.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== summary"
grep -h -E "passed|failed|skipped" "$RESULTS/gpu_tests.txt" | tail -1
grep -h -E "^embedding|^ratio|prompt->" "$RESULTS/gpu_bench_sam_vit_h_bf16.txt"
grep -h -E "ms per slice" "$RESULTS/gpu_bench_seggpt_bf16.txt"
exit $status
