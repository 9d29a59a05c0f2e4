#!/usr/bin/env bash
# Installs what the local servers need and is not there yet: Debian's redis-server, and the Kafka and
# Cassandra jars from Maven Central (resolved by the POMs in infra/local/maven). Safe to run again:
# each step is skipped when its result is already present.
set -euo pipefail
source "$(dirname "$0")/env.sh"

command -v redis-server >/dev/null || apt_install redis-server
command -v redis-cli >/dev/null || apt_install redis-tools
command -v tmux >/dev/null || apt_install tmux   # the terminal client's test drives it in tmux
command -v iptables >/dev/null || apt_install iptables   # a fault scenario cuts a replica off from Kafka
command -v ss >/dev/null || apt_install iproute2         # a fault scenario closes a client's connections
command -v "$JAVA" >/dev/null || apt_install openjdk-17-jre-headless
command -v mvn >/dev/null || apt_install maven
command -v make >/dev/null || apt_install make   # rdkafka builds its bundled librdkafka with make and a C compiler
command -v cc >/dev/null || apt_install gcc
# The services' Kafka client speaks TLS through OpenSSL (rdkafka's `ssl` feature): headers to build it,
# pkg-config to find them, and the openssl tool for the local broker's test certificate.
command -v openssl >/dev/null || apt_install openssl
command -v pkg-config >/dev/null || apt_install pkg-config
[ -f /usr/include/openssl/ssl.h ] || apt_install libssl-dev

resolve_jars() {
  local name="$1" version="$2" dest="$LIB/$1"
  # The stamp names the POM's content too: a dependency added to it is resolved on the next run.
  local pom_sum; pom_sum=$(sha256sum "$ROOT/infra/local/maven/$name/pom.xml" | cut -c1-12)
  local stamp="$dest/.resolved-$version-$pom_sum"
  [ -f "$stamp" ] && return 0
  log "resolving $name $version from Maven Central into $dest"
  rm -rf "$dest"
  mkdir -p "$dest"
  (cd "$ROOT/infra/local/maven/$name" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$dest" -DincludeScope=runtime) \
    >"$LOGS/mvn-$name.log" 2>&1 || { tail -30 "$LOGS/mvn-$name.log" >&2; die "could not resolve $name jars"; }
  touch "$stamp"
}

resolve_jars kafka "$KAFKA_VERSION"
resolve_jars cassandra "$CASSANDRA_VERSION"
