#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

ensure_dotnet
ensure_debian_packages "${FERRY_DEBIAN_PACKAGES[@]}" "${FERRY_TEST_ONLY_PACKAGES[@]}"
ensure_console_test_tools
ensure_deploy_test_tools
if [ "$(id -u)" -eq 0 ]; then
  ensure_postgres
else
  say "Not root: PostgreSQL and network-namespace tests will be skipped (they say why)"
fi

say "Restoring and building (NuGet packages come through restore)"
dotnet build Ferry.slnx -c Debug -nologo -clp:ErrorsOnly

say "Running the tests (unit, integration with real processes on loopback, network namespaces as root)"
log=$(mktemp)
set +e
dotnet test Ferry.slnx -c Debug --no-build -nologo 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite, summed over the test assemblies.
awk '/(Passed|Failed)! +- +Failed:/ {
       gsub(",", ""); for (i = 1; i <= NF; i++) { if ($i == "Failed:") f += $(i+1); if ($i == "Passed:") p += $(i+1); if ($i == "Skipped:") s += $(i+1) } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
rm -f "$log"
exit "$status"
