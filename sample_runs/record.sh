#!/usr/bin/env bash
# Records the sample runs with mirante train (headless, on the CPU, the built-in shapes data).
# About five minutes on a 2-core machine. Checkpoints are not kept: the stores are what ships.
set -euo pipefail
cd "$(dirname "$0")"
rm -f ./*.mirante
train() { mirante train --headless --device cpu --runs-dir . "$@"; }
train --name smallcnn-shapes --model smallcnn --epochs 3 --capture-every 0  # captures (1 MB each) at epoch ends
train --name resnet18-shapes --model resnet18 --steps 200 --batch-size 32 --warmup-steps 20 --capture-every 25
train --name diverging-lr --model plainnet --lr 5 --schedule none --weight-decay 0 --steps 60 --capture-every 10 \
  --probe-every 2 --log-every 2 || true  # it is meant to blow up
train --name plainnet-sigmoid --model plainnet --activation sigmoid --steps 300 --capture-every 50
# for comparing: smallcnn again with another seed (one line with a band), plainnet with ReLU against the sigmoid one
train --name smallcnn-seed1 --model smallcnn --epochs 3 --capture-every 50 --seed 1
train --name plainnet-relu --model plainnet --steps 300 --capture-every 50
mirante lr-find --headless --device cpu --runs-dir . --name lrfind-smallcnn --model smallcnn
mirante visualize ./smallcnn-shapes.mirante --layer conv5 --no-draw  # what conv5's filters respond to, stored
rm -rf ./*.ckpt
ls -la ./*.mirante
