#!/usr/bin/env bash
# The GPU checks (issue 15), prepared to run in one call on a lent device machine (one H200,
# 16 cores, no network; its python3 has torch and torchvision but not open_clip):
#
#   bash scripts/device_wheels.sh                      # here, once: .whl/ with open_clip, ftfy
#   device run: command "bash bench/device_check.sh", carry [".whl"], timeout_s 540
#
# What comes back under $OUT: gpu.txt (the device), embed_gpu.txt (bench_embed_gpu.py: ViT-B-32
# fp16 end to end vs the model alone, target >= 0.8), decode.txt (the loader's images/s per core
# on that machine's cores, to size decode workers), faiss.txt (whether a GPU FAISS is importable).
# Each step has its own timeout so one slow step leaves time for the others (about 6 minutes in all).
set -u
OUT=${OUT:-/tmp/device-check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
    echo "cores: $(nproc)"
    "$PY" -c "import torch, torchvision, open_clip; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'torchvision', torchvision.__version__, 'open_clip', open_clip.__version__)"
} > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

# 1. Embed, end to end against the model alone (decode workers: all cores but two).
timeout 300 "$PY" bench/bench_embed_gpu.py --model ViT-B-32 --precision fp16 --images 50000 --batch-size 256 \
    > "$OUT/embed_gpu.txt" 2>&1
echo "bench_embed_gpu exit $?" >> "$OUT/embed_gpu.txt"
grep -v "WARN" "$OUT/embed_gpu.txt" | tail -8

# 2. Decode per core on this machine's CPUs (generated camera-sized JPEGs; no ../shared there).
timeout 120 "$PY" bench/bench_preprocess.py --generated 200 --repeat 2 > "$OUT/decode.txt" 2>&1
echo "bench_preprocess exit $?" >> "$OUT/decode.txt"
tail -12 "$OUT/decode.txt"

# 3. FAISS on the GPU: the cluster stage trains there when faiss sees a GPU.
"$PY" -c "import faiss; print('faiss', faiss.__version__, 'gpus', faiss.get_num_gpus())" > "$OUT/faiss.txt" 2>&1 \
    || echo "no GPU FAISS here: faiss-gpu's wheels need CUDA 12's cuBLAS and runtime (hundreds of MB), more than a device call carries" >> "$OUT/faiss.txt"
cat "$OUT/faiss.txt"
