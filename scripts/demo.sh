#!/usr/bin/env bash
# Runs Ferry on one host with the embedded defaults (SQLite): controller, relay, connector and client,
# all provisioned through the admin CLI, plus a demo "private" web service; then fetches that service
# with curl through the client's SOCKS5 proxy (client -> QUIC over the relay -> connector -> service).
# Pass --once to exit after showing it (also the default without a terminal).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

once=0
[ "${1:-}" = "--once" ] && once=1
[ -t 0 ] || once=1

ensure_dotnet
ensure_debian_packages "${FERRY_DEBIAN_PACKAGES[@]}"

say "Building ferry (NuGet packages come through restore)"
dotnet build src/Ferry/Ferry.csproj -c Release -nologo -clp:ErrorsOnly
ferry="$PWD/src/Ferry/bin/Release/net10.0/ferry"

demo="$PWD/.demo"
rm -rf "$demo"; mkdir -p "$demo"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

say "Starting the controller (state in $demo/controller, SQLite)"
"$ferry" controller --data "$demo/controller" --listen 127.0.0.1:0 >"$demo/controller.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q "TLS fingerprint" "$demo/controller.log" 2>/dev/null && break; sleep 0.2; done
grep -q "TLS fingerprint" "$demo/controller.log" || { cat "$demo/controller.log"; die "the controller did not start"; }
sed -n '1,5p' "$demo/controller.log"
export FERRY_CONTROLLER=$(grep -o 'https://[^ ]*' "$demo/controller.log" | head -1 | sed 's:/$::')
export FERRY_CONTROLLER_FINGERPRINT=$(grep -o 'sha256:[0-9a-f]*' "$demo/controller.log" | head -1)
export FERRY_API_KEY=$(cat "$demo/controller/admin.key")

say "Starting a demo private web service on 127.0.0.1 (only the connector is meant to reach it)"
mkdir -p "$demo/www"
cat >"$demo/www/respond.sh" <<'RESPOND'
#!/bin/sh
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nHello from a private service, reached through Ferry.\n'
RESPOND
chmod +x "$demo/www/respond.sh"
service_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 18080)
socat TCP-LISTEN:"$service_port",bind=127.0.0.1,fork,reuseaddr EXEC:"$demo/www/respond.sh" >"$demo/service.log" 2>&1 &
pids+=($!)

say "Provisioning relay 'demo-relay' and starting it (TLS/TCP relay links and STUN)"
"$ferry" admin relay provision --name demo-relay --json >"$demo/relay-tokens.json"
chmod 600 "$demo/relay-tokens.json"
"$ferry" relay --tokens "$demo/relay-tokens.json" --listen 127.0.0.1:0 --stun 127.0.0.1:0 >"$demo/relay.log" 2>&1 &
pids+=($!)

say "Creating remote network 'demo-net' with resource 'demo-service', and provisioning connector 'demo-connector'"
"$ferry" admin network create demo-net
"$ferry" admin resource add 127.0.0.1 --network demo-net --name demo-service --tcp "$service_port"
"$ferry" admin connector provision --network demo-net --name demo-connector --json >"$demo/connector-tokens.json"
chmod 600 "$demo/connector-tokens.json"

say "Starting the connector (it only dials out; rotates its tokens into $demo/connector-tokens.json)"
"$ferry" connector --tokens "$demo/connector-tokens.json" >"$demo/connector.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  "$ferry" admin connector show demo-connector --json 2>/dev/null | grep -q '"state": "online"' && break
  sleep 0.2
done

say "The connector as the controller sees it"
"$ferry" admin connector show demo-connector
"$ferry" admin connector show demo-connector --json | grep -q '"state": "online"' || die "the connector did not come online; see $demo/connector.log"

say "Creating service account 'demo-app', granting it demo-service, and starting the client"
demo_key=$("$ferry" admin service-account create demo-app --json | sed -n 's/.*"key": "\(.*\)".*/\1/p')
"$ferry" admin policy grant demo-service --service-account demo-app >/dev/null
FERRY_SERVICE_ACCOUNT_KEY="$demo_key" "$ferry" client --state "$demo/client" up --socks 0 --http-proxy 0 >"$demo/client.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q "socks5 listening on" "$demo/client.log" 2>/dev/null && grep -q "Resources granted now: 1" "$demo/client.log" && break; sleep 0.2; done
socks=$(grep -o 'socks5 listening on [0-9.:]*' "$demo/client.log" | awk '{print $4}')
http_proxy=$(grep -o 'http-connect listening on [0-9.:]*' "$demo/client.log" | awk '{print $4}')
[ -n "$socks" ] || { cat "$demo/client.log"; die "the client did not start its SOCKS5 proxy"; }
"$ferry" client --state "$demo/client" resources

say "Fetching the private service through Ferry: curl --socks5-hostname $socks http://127.0.0.1:$service_port/"
answer=$(curl -sS --max-time 30 --socks5-hostname "$socks" "http://127.0.0.1:$service_port/") || die "the request through Ferry failed; see $demo/*.log"
echo "  $answer"
[ "$answer" = "Hello from a private service, reached through Ferry." ] || die "unexpected answer through Ferry: $answer"

say "Access to a private resource works: client -> QUIC over the relay -> connector -> service"
echo "  logs:     $demo/{controller,relay,connector,client}.log"
echo "  console:  the admin API is at $FERRY_CONTROLLER/api/v1 (OpenAPI at /openapi/v1.json)"
echo "  admin:    FERRY_CONTROLLER=$FERRY_CONTROLLER FERRY_CONTROLLER_FINGERPRINT=$FERRY_CONTROLLER_FINGERPRINT FERRY_API_KEY=\$(cat $demo/controller/admin.key) $ferry admin connector list"
echo "  try:      curl --socks5-hostname $socks http://127.0.0.1:$service_port/"
echo "            curl --proxytunnel --proxy http://$http_proxy http://127.0.0.1:$service_port/"
if [ "$once" -eq 1 ]; then
  exit 0
fi
echo "Press Ctrl+C to stop."
wait
