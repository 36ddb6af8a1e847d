#!/bin/bash
# The GPU work of issues 14 and 15, prepared so that a lent GPU's 15 minutes go to work, not
# to debugging: (1) the nuclei model continued with the zoo's GPU recipe and the transfer
# augmentation (train only: it is scored and shipped here on the CPU with --ship-only, whose
# held-back scores do not depend on where it trained), (2) the speed table on the GPU (bf16
# autocast and channels_last, as inference uses on CUDA; bf16 matmul peak).
#
# Here, once (the data beside the checkout does not travel; 42 MB):
#   mkdir -p .gpu_data && cp -r ../shared/data/* .gpu_data/ && echo /.gpu_data/ >> .git/info/exclude
# Then one device call (`run`): command "bash scripts/gpu_session.sh", carry [".gpu_data"],
# timeout 560. At most 8 files of 16 MiB come back from $OUT, two folders down: the best
# weights, the run's zoo_state.json and the logs (the optimizer state stays there: a GPU
# run is a fresh stage, not resumed). Back here, under the reply's files_at:
#   python scripts/train_zoo.py nuclei --ship-only --runs-dir <files_at> \
#       --models-dir runs/gpu/models --docs runs/gpu/models.md
# and benchmarks/bench_shift.py / bench_depth.py warning before shipping (see docs/benchmarks.md).
set -uo pipefail
export PYTHONPATH=$PWD/src NAPARI_UNETPP_DATA=$PWD/.gpu_data PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    | tee "$OUT/device.txt"
timeout 330 python3 scripts/train_zoo.py nuclei --start-from src/napari_unetpp/models/nuclei \
    --widths 16 32 64 128 256 --batch-size 16 --patch-size 256 256 --device cuda \
    --learning-rate 1e-4 --keep-norm \
    --time-budget 5 --no-ship --runs-dir /tmp/gpu_runs 2>&1 | tee "$OUT/train.log"
mkdir -p "$OUT/nuclei/best"
cp /tmp/gpu_runs/nuclei/zoo_state.json "$OUT/nuclei/" 2>/dev/null
cp /tmp/gpu_runs/nuclei/best/config.json /tmp/gpu_runs/nuclei/best/weights.safetensors \
    "$OUT/nuclei/best/" 2>/dev/null
timeout 200 python3 benchmarks/bench_speed.py --device cuda --full --skip-training \
    --size 4096 --tile 512 --batch-size 16 2>&1 \
    | tee "$OUT/bench_gpu.log"
