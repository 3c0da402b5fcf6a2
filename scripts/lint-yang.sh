#!/usr/bin/env bash
# Lints qkdni's YANG modules (yang/*.yang) and validates the example instance data
# (yang/examples/*.xml). Fails on any warning or error, not only on a non-zero exit.
#
# Checks:
#   1. pyang --strict --lint -p yang yang/*.yang, but for etsi-qkd-sdn-node.yang, which
#      gets pyang --strict only: its schema is ETSI GS QKD 015 V2.1.1's, whose top-level
#      container holds a mandatory leaf (qkdn_id), which RFC 8407 4.10 advises against.
#        --lint is pyang's generic RFC 8407 lint; --ietf (IETF-only rules: module name
#        'ietf-', namespace 'urn:ietf:params:xml:ns:yang:', IETF Trust copyright) is
#        deliberately not used, since no module here is an IETF module.
#   2. pyang --strict --lint --lint-ensure-hyphenated-names
#            --lint-namespace-prefix urn:qkdni:yang: --lint-modulename-prefix qkdni
#        on qkdni's own modules (yang/qkdni-*.yang). The etsi-* modules keep the ETSI
#        GS QKD 015 names (underscores, and a namespace that does not repeat the module
#        name), so they get check 1 only.
#   3. yanglint -p yang yang/*.yang (all modules in one context), and each module
#      alone with its imports made implemented (yanglint -i).
#   4. yanglint on yang/examples/*.xml: notif-*.xml as notifications (-t notif),
#      *-state.xml as a full datastore with state (-t data), any other as
#      configuration (-t config).
#
# Tools: pyang from $PYANG, else from PATH, else .venv/bin/pyang (installed there with
# pip when missing); yanglint from Debian's libyang2-tools (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

PYANG_VERSION=2.7.1

# --- tools -------------------------------------------------------------------------
if [ -n "${PYANG:-}" ]; then
  command -v "$PYANG" >/dev/null || { echo "lint-yang: PYANG=$PYANG not found" >&2; exit 1; }
elif command -v pyang >/dev/null; then
  PYANG=pyang
else
  if [ ! -x .venv/bin/pyang ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "pyang==$PYANG_VERSION"
  fi
  PYANG=.venv/bin/pyang
fi

if ! command -v yanglint >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libyang2-tools
fi

shopt -s nullglob
modules=(yang/*.yang)
own_modules=(yang/qkdni-*.yang)
examples=(yang/examples/*.xml)
if [ ${#modules[@]} -eq 0 ]; then
  echo "lint-yang: no modules in yang/" >&2
  exit 1
fi

# --- runner: a check passes only with exit status 0 and no output at all ------------
failed=0
check() {
  local what=$1 out rc
  shift
  set +e
  out=$("$@" 2>&1)
  rc=$?
  set -e
  if [ $rc -ne 0 ] || [ -n "$out" ]; then
    echo "FAIL ($what, exit $rc): $*" >&2
    [ -z "$out" ] || printf '%s\n' "$out" >&2
    failed=1
  fi
}

# --- 1, 2: pyang ---------------------------------------------------------------------
# etsi-qkd-sdn-node has the schema of ETSI GS QKD 015 V2.1.1, whose top-level container
# qkd_node holds the mandatory qkdn_id (RFC 8407 4.10 advises against it): that module gets
# pyang --strict without --lint; every other module gets --lint.
lint_modules=()
for m in "${modules[@]}"; do
  [ "$(basename "$m")" = etsi-qkd-sdn-node.yang ] || lint_modules+=("$m")
done
check "pyang lint" "$PYANG" --strict --lint -p yang "${lint_modules[@]}"
check "pyang strict" "$PYANG" --strict -p yang yang/etsi-qkd-sdn-node.yang
if [ ${#own_modules[@]} -gt 0 ]; then
  check "pyang lint, qkdni naming" "$PYANG" --strict --lint \
    --lint-ensure-hyphenated-names \
    --lint-namespace-prefix urn:qkdni:yang: \
    --lint-modulename-prefix qkdni \
    -p yang "${own_modules[@]}"
fi

# --- 3: yanglint on the schemas --------------------------------------------------------
check "yanglint" yanglint -p yang "${modules[@]}"
for m in "${modules[@]}"; do
  check "yanglint $m" yanglint -i -p yang "$m"
done

# --- 4: example instance data -----------------------------------------------------------
for x in "${examples[@]}"; do
  case $(basename "$x") in
    notif-*.xml) type=notif ;;
    *-state.xml) type=data ;;
    *) type=config ;;
  esac
  check "yanglint -t $type $x" yanglint -p yang -t "$type" "${modules[@]}" "$x"
done

if [ $failed -ne 0 ]; then
  echo "yang lint: FAILED" >&2
  exit 1
fi
echo "yang lint: ${#modules[@]} modules clean, ${#examples[@]} examples valid"
