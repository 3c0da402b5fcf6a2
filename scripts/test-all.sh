#!/usr/bin/env bash
# Runs every test of qkdni: formatting, lints, unit, property and integration tests
# (real KM processes over real sockets), with the third-party interop clients.
# Works on a fresh Debian 12 with only the Rust toolchain: installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/build-deps.sh
need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
# openssl verify -x509_strict checks every certificate the testbed issues
command -v openssl >/dev/null || need_apt+=(openssl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# third-party NETCONF server for the client interop test (Debian's netconfd behind sshd)
if [ -f tests/interop/apt-packages.txt ]; then
  for pkg in $(cat tests/interop/apt-packages.txt); do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
  done
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# Third-party clients used by the interop tests, in a project-local venv.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/interop/requirements.txt
export QKDNI_PYTHON="$PWD/.venv/bin/python"

./scripts/lint-yang.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

# Fuzz smoke run of the NETCONF framing and RPC layer, a KM's ETSI 014 API (its router over
# a real agent) and the JSON bodies of ETSI 014, Kxi, Cxi and Mxi (cargo-fuzz builds on
# stable with --sanitizer none); a crash fails the run. FUZZ_SECONDS=0 skips it.
# -max_len=65536 keeps deep nesting within reach (a 4 000-level message is 28 KB; the seed
# fuzz/seeds/rpc/deep-get-filter.xml nests 5 000 levels).
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz
  mkdir -p fuzz/corpus/framing fuzz/corpus/rpc fuzz/corpus/etsi014 fuzz/corpus/json
  for target in framing rpc etsi014 json; do
    seeds=""; [ -d "fuzz/seeds/$target" ] && seeds="seeds/$target"
    if ! (cd fuzz && cargo fuzz run --sanitizer none -O "$target" "corpus/$target" $seeds -- \
          -max_total_time="$FUZZ_SECONDS" -max_len=65536) > "fuzz/$target.log" 2>&1; then
      tail -40 "fuzz/$target.log"
      echo "fuzz target $target failed" >&2
      exit 1
    fi
  done
  echo "fuzz smoke: ${FUZZ_SECONDS}s per target, no crash"
fi
cargo test --locked --workspace -- --test-threads=2

