#!/usr/bin/env bash
# Issues 15 (item 4) and 22 (item 1): every GPU figure in one run of about 10 minutes on one CUDA device.
#   benchmarks/gpu.sh            # on a CUDA machine: dump vs inference, cached / label-only / online
#                                # training (resnet50 -> resnet18, 224 px, bf16), then the ceilings
#                                # benchmark with its near-free models on the GPU, then a token dump of
#                                # a Qwen2-shaped 0.5 B teacher at 2,048 tokens against its bare forward,
#                                # then a student of that shape trained with the chunked and the
#                                # materialised loss (batch 4 x 2,048; about 1-2 minutes of the ~10)
#   benchmarks/gpu.sh --smoke    # anywhere: the same scripts, tiny, on the CPU (checks the path only)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ "${1:-}" == "--smoke" ]]; then
  python -m benchmarks.gpu --smoke
  python -m benchmarks.ceilings --device cpu --rounds 1 --classes 100 --codecs fp16 --n 4096
  python -m benchmarks.lm_dump gpu --smoke
  python -m benchmarks.lm_students_memory gpu --smoke
  exit
fi
python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device here: run it with --smoke")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
started=$SECONDS
python -m benchmarks.gpu
python -m benchmarks.ceilings --device cuda --rounds 1 --classes 1000,32000 --codecs fp16,topk:50
python -m benchmarks.lm_dump gpu
python -m benchmarks.lm_students_memory gpu
echo "gpu.sh: $((SECONDS - started)) s"
