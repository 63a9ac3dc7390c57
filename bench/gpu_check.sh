#!/usr/bin/env bash
# The GPU path, on a machine with a CUDA GPU: the CUDA tests (float16 autocast, CPU/GPU
# agreement of every shipped model) and the inference benchmark on the GPU, which writes
# its "inference-cuda" section of docs/benchmarks.md.
#
#   bench/gpu_check.sh [python]      # default: .venv/bin/python
set -euo pipefail
python="${1:-.venv/bin/python}"
"$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print(torch.__version__, torch.cuda.get_device_name())'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
tests=0
"$python" -m pytest -p no:cacheprovider -q tests/unit/test_gpu_agreement.py \
    "tests/unit/test_model_formats.py::test_inference_context_on_cuda_autocasts_to_float16" || tests=$?
"$python" -m bench.inference --device cuda
exit "$tests"
