#!/bin/sh
# The entry point of every image (infra/images/build.sh): prepares what the binaries read from files and what
# only the running task knows, then replaces itself with the binary (exec), which so gets SIGTERM directly.
#
# 1. Secrets arrive as environment variables (ECS `secrets`, from Secrets Manager), but the binaries read
#    certificates and keys from files. Each *_PEM variable below is written to a file in $SECRETS_DIR
#    (mode 0600; a volume in the task), the matching *_FILE variable is pointed at it, and the *_PEM variable
#    is removed from the environment. Setting both a *_PEM and its *_FILE is refused (exit 64).
# 2. A service that binds its gRPC server to 0.0.0.0 would otherwise advertise 0.0.0.0 (gateways write their
#    push address to presence; chat services tell each other where to forward a partition's writes): when the
#    *_ADVERTISE_ADDR variable is unset, it is set to this host's first address that is neither loopback nor
#    link-local (read from /proc/net/fib_trie: no tool needed), with the bound port.
# Only shell builtins are used: the image holds no other program than the binary.
set -eu

secrets_dir="${SECRETS_DIR:-/run/secrets}"
umask 077

# pem_to_file PEM_VAR FILE_VAR FILE_NAME
pem_to_file() {
  eval "pem=\${$1:-}"
  [ -n "$pem" ] || return 0
  eval "file=\${$2:-}"
  if [ -n "$file" ]; then
    echo "entrypoint: set $1 or $2, not both" >&2
    exit 64
  fi
  printf '%s\n' "$pem" >"$secrets_dir/$3"
  export "$2=$secrets_dir/$3"
  unset "$1"
}

pem_to_file GRPC_TLS_CERT_PEM GRPC_TLS_CERT_FILE grpc-tls-cert.pem
pem_to_file GRPC_TLS_KEY_PEM GRPC_TLS_KEY_FILE grpc-tls-key.pem
pem_to_file GRPC_TLS_CA_PEM GRPC_TLS_CA_FILE grpc-tls-ca.pem
pem_to_file GATEWAY_JWT_PUBLIC_KEY_PEM GATEWAY_JWT_PUBLIC_KEY_FILE jwt-public-key.pem
pem_to_file GATEWAY_TLS_CERT_PEM GATEWAY_TLS_CERT_FILE gateway-tls-cert.pem
pem_to_file GATEWAY_TLS_KEY_PEM GATEWAY_TLS_KEY_FILE gateway-tls-key.pem
pem_to_file KAFKA_TLS_CA_PEM KAFKA_TLS_CA_FILE kafka-tls-ca.pem
pem_to_file REDIS_TLS_CA_PEM REDIS_TLS_CA_FILE redis-tls-ca.pem

# The first local IPv4 address that is not loopback (127/8) nor link-local (169.254/16: the ECS agent's).
# In /proc/net/fib_trie an address line "|-- A.B.C.D" is followed by "/32 host LOCAL" when it is our own.
local_ipv4() {
  prev=""
  while read -r first second rest; do
    if [ "$first" = "|--" ]; then
      prev="$second"
    elif [ "$first" = "/32" ] && [ "$second" = "host" ] && [ "$rest" = "LOCAL" ]; then
      case "$prev" in
        127.* | 169.254.* | "") ;;
        *) echo "$prev"; return 0 ;;
      esac
    fi
  done </proc/net/fib_trie
  return 1
}

# advertise BIND_VAR ADVERTISE_VAR
advertise() {
  eval "adv=\${$2:-}"
  [ -z "$adv" ] || return 0
  eval "bind=\${$1:-}"
  case "$bind" in
    0.0.0.0:*) ;;
    *) return 0 ;;
  esac
  if ! ip="$(local_ipv4)"; then
    echo "entrypoint: $1 is $bind and no address of this host was found for $2: set $2" >&2
    exit 64
  fi
  export "$2=$ip:${bind##*:}"
}

advertise GATEWAY_GRPC_ADDR GATEWAY_ADVERTISE_ADDR
advertise CHAT_GRPC_ADDR CHAT_ADVERTISE_ADDR

exec "$@"
