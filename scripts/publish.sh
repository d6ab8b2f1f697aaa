#!/usr/bin/env bash
# Publishes the self-contained 'ferry' executable for Linux: ./scripts/publish.sh [-o DIR] [RID...]
# RIDs: linux-x64, linux-arm64 (both when none is named). Each lands in DIR/<rid>/ (artifacts/publish/<rid>/ by
# default), the folder the container files in deploy/container copy from. The .NET runtime is inside; the QUIC
# libraries are not: the target needs Debian's libngtcp2-9 and libngtcp2-crypto-gnutls2 (GnuTLS comes with them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

out=artifacts/publish
if [ "${1:-}" = "-o" ]; then
  [ -n "${2:-}" ] || die "-o needs a folder: ./scripts/publish.sh -o DIR [RID...]"
  out=$2
  shift 2
fi
rids=("$@")
[ ${#rids[@]} -gt 0 ] || rids=(linux-x64 linux-arm64)
for rid in "${rids[@]}"; do
  case "$rid" in
    linux-x64|linux-arm64) ;;
    *) die "unknown RID '$rid': give linux-x64 or linux-arm64 (or none for both)" ;;
  esac
done

ensure_dotnet
for rid in "${rids[@]}"; do
  say "Publishing ferry for $rid into $out/$rid (self-contained; the runtime packs come through NuGet restore)"
  rm -rf "${out:?}/$rid"
  dotnet publish src/Ferry/Ferry.csproj -c Release -r "$rid" --self-contained -o "$out/$rid" -nologo -clp:ErrorsOnly
  say "$out/$rid/ferry is ready ($(du -sh "$out/$rid" | cut -f1)); the target needs: ${FERRY_RUNTIME_PACKAGES[*]}"
done
