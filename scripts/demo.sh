#!/usr/bin/env bash
# The main job: build qkdni (installing build packages when missing) and run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-deps.sh
exec cargo run --release --locked -- demo "$@"
