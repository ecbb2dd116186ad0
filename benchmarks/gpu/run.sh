#!/usr/bin/env bash
# The GPU acceptance run (benchmarks/gpu/README.md): the box's python3 (torch, transformers, onnx already there),
# run from the repository root as a module so that nothing needs to be installed first. --help lists the options.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" -m benchmarks.gpu.run "$@"
