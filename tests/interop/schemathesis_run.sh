#!/usr/bin/env bash
# Runs a bounded schemathesis (property-based API testing, a client nobody here wrote)
# against domain A's controller REST API, checked against the controller's own OpenAPI
# document: every phase (examples, coverage, fuzzing, stateful), every check.
#
# Usage:
#   schemathesis_run.sh <testbed dir>
#
# Needs `st` (schemathesis, pinned in requirements.txt) and python3 on PATH. Reads
# <testbed dir>/endpoints.json for the REST URL, the orchestrator's bearer token and the
# testbed CA. Prints schemathesis' report; exits non-zero on any failure.
#
# Bounds: at most QKDNI_ST_MAX_EXAMPLES (30) test cases per operation and phase, and the
# whole run is killed after QKDNI_ST_TIMEOUT (110) seconds. QKDNI_ST_SEED replays the seed
# a failed run printed.
#
# One check is configured for one operation: POST /api/v1/sessions names SAEs that must
# exist in the domain and differ from each other, which a JSON schema cannot say, so a
# schema-valid body is legitimately refused with the documented 422 (unknown SAE) or 400
# (same SAE twice). positive_data_acceptance accepts those two statuses there (plus its
# defaults); every other check and operation runs with schemathesis' defaults. Sessions
# really are created and deleted on the testbed.

set -euo pipefail

die() {
    echo "schemathesis_run.sh: $*" >&2
    exit 2
}

[ $# -eq 1 ] || die "usage: $0 <testbed dir>"
bed=$(cd "$1" && pwd) || die "no testbed directory $1"
[ -f "$bed/endpoints.json" ] || die "no $bed/endpoints.json"
command -v st >/dev/null || die "schemathesis (st) is not on PATH"
command -v python3 >/dev/null || die "python3 is not on PATH"

# rest URL, token, CA file: one per line
mapfile -t endpoint < <(python3 - "$bed/endpoints.json" <<'EOF'
import json, sys
with open(sys.argv[1]) as f:
    e = json.load(f)
c = e["domains"]["A"]["controller"]
print(c["rest"].rstrip("/"))
print(c["token"])
print(e["ca_cert"])
EOF
)
[ ${#endpoint[@]} -eq 3 ] || die "cannot read domain A's controller from $bed/endpoints.json"
rest=${endpoint[0]}
token=${endpoint[1]}
ca=${endpoint[2]}
[ -f "$ca" ] || die "no CA certificate $ca"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat >"$work/schemathesis.toml" <<'EOF'
[[operations]]
include-path = "/api/v1/sessions"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "422", "429", "5xx",
]
EOF

seed=()
if [ -n "${QKDNI_ST_SEED:-}" ]; then
    seed=(--seed "$QKDNI_ST_SEED")
fi

st --version
# In $work: hypothesis keeps no example database and schemathesis writes nothing elsewhere.
cd "$work"
status=0
timeout --kill-after=10 "${QKDNI_ST_TIMEOUT:-110}" \
    st --config-file "$work/schemathesis.toml" --no-color run "$rest/openapi.json" \
    --header "Authorization: Bearer $token" \
    --tls-verify "$ca" \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "${QKDNI_ST_MAX_EXAMPLES:-30}" \
    --generation-database none \
    --request-timeout 20 \
    --workers 1 \
    "${seed[@]}" || status=$?
case $status in
0) echo "schemathesis_run.sh: no failures" ;;
124 | 137) echo "schemathesis_run.sh: run exceeded ${QKDNI_ST_TIMEOUT:-110} s" >&2 ;;
*) echo "schemathesis_run.sh: schemathesis failed (exit $status)" >&2 ;;
esac
exit "$status"
