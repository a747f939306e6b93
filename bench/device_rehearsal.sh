#!/usr/bin/env bash
# On the lent GPU machine (issue 17): unpack what `.carry/` brings (python packages the image lacks,
# Qwen's tokenizer files, SeaweedFS's `weed`), then run `tests` (every test in tests/gpu) or
# `rehearsal` (bench/rehearsal.py at Dream-7B shape) or `host_memory` (bench/host_memory.py: host RAM of
# every stage at 7B, random init -> export -> pretrained LoRA and full_8bit from it, and the LoRA job
# inside a cgroup limit). Build `.carry/` here with bench/carry_build.sh.
set -uo pipefail
mode=${1:?usage: bench/device_rehearsal.sh tests|rehearsal|host_memory [bench/host_memory.py options]}
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/site /tmp/weedbin
python3 - <<'PY'
import lzma, shutil, tarfile
tarfile.open(".carry/site.tar.xz").extractall("/tmp/site")
with lzma.open(".carry/weed.xz") as src, open("/tmp/weedbin/weed", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 24)
PY
chmod +x /tmp/weedbin/weed
export PYTHONPATH=/tmp/site PATH=/tmp/weedbin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, torchao, transformers, datasets, pyarrow; print("torch", torch.__version__, "torchao", torchao.__version__, "transformers", transformers.__version__, "datasets", datasets.__version__, "pyarrow", pyarrow.__version__)'
df -h / /dev/shm | tail -n +2; free -g | head -2
if [ "$mode" = tests ]; then
  timeout 560 python3 -m pytest tests/gpu -v -p no:cacheprovider -o addopts='' --durations=0 2>&1 | tee "$out/gpu_tests.log"
  exit $?
fi
if [ "$mode" = host_memory ]; then
  # Run dirs on a tmpfs (fast; its pages are no process's RSS); the cgroup run on the disk, since
  # tmpfs pages written from inside the cgroup would count against its limit.
  mkdir -p /mnt/hm && (mount -t tmpfs -o size=100g tmpfs /mnt/hm || echo "no tmpfs: run dirs on the disk")
  mkdir -p /root/hm-cg
  timeout "${HOST_MEMORY_TIMEOUT:-520}" python3 bench/host_memory.py --scale 7b --work /mnt/hm --cgroup \
    --cgroup-work /root/hm-cg --tokenizer-files /tmp/site/_qwen_tokenizer_files --out-dir "$out" "${@:2}" 2>&1 \
    | tee "$out/host_memory.out"
  rc=${PIPESTATUS[0]}
  cp /mnt/hm/host_memory.log "$out/host_memory.log" 2>/dev/null
  df -h / /mnt/hm | tail -n +2
  exit $rc
fi
# A full_8bit checkpoint of Dream 7B is ~31 GB and one is kept (two while the next is written), so the
# run dir goes on a RAM-backed tmpfs; the S3 server's data (15 GB) and the pulled copy go on the disk
# when it has room.
mkdir -p /mnt/reh && (mount -t tmpfs -o size=100g tmpfs /mnt/reh || echo "no tmpfs: run dir on the disk")
root_free_gb=$(df -BG --output=avail / | tail -1 | tr -dc 0-9)
pull_dir=/root/reh/pulled; [ "$root_free_gb" -lt 36 ] && pull_dir=/mnt/reh/pulled
mkdir -p /root/reh
timeout 570 python3 bench/rehearsal.py --scale 7b --work /mnt/reh --s3-dir /root/reh/s3 --pull-dir "$pull_dir" \
  --tokenizer-files /tmp/site/_qwen_tokenizer_files --json "$out/rehearsal-7b.json" 2>&1 | tee "$out/rehearsal-7b.out"
rc=$?
cp /mnt/reh/rehearsal.log "$out/rehearsal-7b.log" 2>/dev/null
df -h / /mnt/reh | tail -n +2
exit $rc
