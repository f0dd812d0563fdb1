#!/usr/bin/env bash
# Wheels the GPU machine's image lacks (it has torch, transformers, lightning, torchmetrics, tensorboard;
# no internet there): jsonargparse and what its [signatures] extra needs, for the LightningCLI runs
# (`main.py`, the ShapesWorld pipeline). Run here, once per checkout; the device call names `.whl` in
# its carry and benchmarks/gpu_checks.sh installs them. Python 3.12 / x86-64 is that image's.
set -eu
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 importlib-resources==7.1.0
ls -la .whl
