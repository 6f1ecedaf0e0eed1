#!/usr/bin/env bash
# Reproduce every GPU figure of refdtp (about 11 minutes); see README.md, section "GPU".
# Usage: tools/gpu_check.sh [--out DIR] [--data-dir DIR] [--limit STAGE=SECONDS ...] [--dry-run]
set -u
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m refdtp.bench.gpu_check "$@"
