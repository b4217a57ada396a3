#!/bin/bash
# The GPU checks of the neural suppressor in one short call, for a session
# lent a device machine (whose image has CUDA torch, numpy, safetensors and
# pytest, but no pedalboard, JACK or project install):
#
#     bash bench/gpu_check.sh          # from the repository root; ~3-6 min, at most 9.7 min
#
# 1. the CUDA tests (pytest -m gpu in tests/models: CUDA graph == CPU,
#    the exact strength-0 path through the graph, the pause gate's depth and
#    threshold per channel through its device tensors, reset in place, 1024
#    channels in one batch; training on CUDA against the same run on the
#    CPU, on a synthetic cache: the machine has no training data);
# 2. bench/speed.py --gpu-only: per-hop p50/p99 for 1..4096 channels;
# 3. bench/train_speed.py --device cuda --synthetic: the training step on
#    the GPU at batch 6..256, and how many mixing processes feed it.
# Logs and the JSON files go to $OUT (the device tool's folder) or
# bench/out. Steps 1 and 3 need scipy for the mixing; without it the
# training test is skipped (pytest -rs lists it) and step 3 fails, saying
# so; step 2 still runs, on synthetic input (--data "": the shared data
# would need pedalboard to load, which the image lacks). The project is imported through a PEP 420 shim (quietcast/ ->
# bridge, daemon, models), as the package-dir mapping installs it.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$here/bench/out}
mkdir -p "$out"
shim=$(mktemp -d)
mkdir -p "$shim/quietcast"
for p in bridge daemon models; do ln -s "$here/$p" "$shim/quietcast/$p"; done
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$here"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} | tee "$out/gpu_env.txt"
rc=0
python3 -c "import scipy; print('scipy', scipy.__version__)" 2>&1 | tee -a "$out/gpu_env.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/models/test_neural.py \
    tests/models/test_train_gpu.py -rs 2>&1 | tee "$out/gpu_tests.log"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
timeout 240 python3 bench/speed.py --gpu-only --data "" --json "$out/speed.json" 2>&1 | tee "$out/gpu_speed.log"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
timeout 140 python3 bench/train_speed.py --device cuda --synthetic --steps 8 --batch 6 --seconds 4 \
    --mix-version 9 --batches 32,128,256 --pools 8,15 --json "$out/train_speed.json" 2>&1 \
    | tee "$out/gpu_train_speed.log"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
exit $rc
