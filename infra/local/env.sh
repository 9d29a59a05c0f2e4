# Shared settings for the local scripts: ports and folders. Sourced, never run.
# Every port is a project port on 127.0.0.1, chosen away from the usual defaults so a machine's own
# Kafka, Cassandra or Redis does not collide with ours. Each can be overridden from the environment.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL="${CHAT_LOCAL_DIR:-$ROOT/.local}"
LIB="$LOCAL/lib"
RUN="$LOCAL/run"
LOGS="$LOCAL/logs"
DATA="$LOCAL/data"

KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
# The broker's TLS listener, with a certificate for localhost signed by .local/tls/ca.pem.
KAFKA_TLS_PORT="${KAFKA_TLS_PORT:-19094}"
# The three-node Kafka (`servers.sh up kafka3`): node N's broker on KAFKA3_PORT+N, its controller on
# KAFKA3_PORT+10+N.
KAFKA3_PORT="${KAFKA3_PORT:-19100}"
CASSANDRA_PORT="${CASSANDRA_PORT:-19042}"
CASSANDRA_STORAGE_PORT="${CASSANDRA_STORAGE_PORT:-17000}"
REDIS_PORT="${REDIS_PORT:-16379}"
REDIS_TLS_PORT="${REDIS_TLS_PORT:-16380}"
# The CA and the localhost certificate of the TLS listeners (Kafka's, Redis's), made by servers.sh.
TLS_DIR="$LOCAL/tls"

KAFKA_VERSION=4.1.1
CASSANDRA_VERSION=5.0.6

JAVA="${JAVA:-java}"

log() { printf '[infra] %s\n' "$*" >&2; }
die() { printf '[infra] error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$LIB" "$RUN" "$LOGS" "$DATA"

# apt_install PACKAGE...: Debian's packages, with one `apt-get update` per script run first.
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$LOGS/apt.log" 2>&1 || die "apt-get update failed, see $LOGS/apt.log"
    apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$LOGS/apt.log" 2>&1 \
    || { tail -20 "$LOGS/apt.log" >&2; die "apt-get install $* failed"; }
}

# go_tool NAME MODULE@VERSION: build MODULE into .local/bin unless NAME of that version is there (under
# `nice -n 19`: a Go build takes minutes of both cores the first time).
BIN_DIR="$LOCAL/bin"
go_tool() {
  local name="$1" module="$2" version="${2##*@}"
  local stamp="$BIN_DIR/.$name-$version"
  [ -x "$BIN_DIR/$name" ] && [ -f "$stamp" ] && return 0
  command -v go >/dev/null || die "go is needed to build $name"
  mkdir -p "$BIN_DIR"
  log "building $name $version from the Go module proxy (a few minutes the first time)"
  GOBIN="$BIN_DIR" CGO_ENABLED=0 nice -n 19 go install "$module" >"$LOGS/go-$name.log" 2>&1 \
    || { tail -20 "$LOGS/go-$name.log" >&2; die "go install $module failed"; }
  rm -f "$BIN_DIR/.$name-"*
  touch "$stamp"
}
