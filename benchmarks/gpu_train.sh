#!/usr/bin/env bash
# The training results of the models issue on a lent GPU, in one device `run`: the book's
# three models at the book's settings (10 epochs, batch 128; LeNet lr 0.1 at 28x28, VGG lr
# 0.01 at 224x224, ResNet-18 lr 0.01 at 96x96), cuconv against cuDNN from identical weights
# and batch order, on the Fashion-MNIST subset (say so with the results).
#
# The subset lives in ../shared beside the checkout, which does not travel to the device:
# copy it into .device-data/ (ignored by git) once, and carry that folder with the modules
# that `bash benchmarks/gpu_run.sh prebuild` compiled (without them they are built there first):
#   mkdir -p .device-data && cp -r ../shared/data/fashion-mnist-subset .device-data/
#   run (carry [".device-data", ".device-modules"]): bash benchmarks/gpu_train.sh
# $OUT receives train.log and, per model, train-MODEL/{metrics.json,curves.png} (7 files: at
# most 8 come back). MODELS="lenet" (say) trains fewer.
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_common.sh
out=${OUT:-gpu-run}
data=${DATA:-$PWD/.device-data/fashion-mnist-subset}
mkdir -p "$out"
log="$out/train.log"
describe_machine "$log"
ensure_cuda_modules "$log" || { tail -40 "$log"; exit 1; }
for model in ${MODELS:-lenet vgg resnet18}; do
  PYTHONUNBUFFERED=1 python3 -m cuconv train --model "$model" --backend both --device cuda \
    --data-dir "$data" --out "$out/train-$model" 2>&1 | tee -a "$log" | tail -6
done
