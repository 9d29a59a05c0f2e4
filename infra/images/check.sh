#!/usr/bin/env bash
# infra/images/check.sh [debug|release]: builds the images (build.sh) and checks each one as a container
# runtime would run it, without a container engine:
#   1. its configuration (skopeo inspect): entry point, a user that is not root, exposed ports, environment
#      defaults, the /run/secrets volume, the build profile;
#   2. its content (umoci unpack --rootless): the binary is the one just built, /run/secrets belongs to the
#      image's user;
#   3. the binary inside it, run from the unpacked root filesystem (chroot, as the image's user, with only the
#      image's environment and files, /proc mounted in a private mount namespace): `--help`; the entry point's
#      own work (secrets given as *_PEM variables become files, the advertised address is derived); then a
#      real start of each service against the local servers (infra/local/servers.sh up): chatctl migrate and
#      create-topics, the chat service and a gateway with mutual TLS and a JWT public key given as PEM
#      variables, a delivery worker; each waited for on its port (/readyz, /metrics), then sent SIGTERM,
#      and required to exit with status 0.
set -euo pipefail
source "$(dirname "$0")/../local/env.sh"

PROFILE="${1:-debug}"
"$ROOT/infra/images/build.sh" "$PROFILE"

LAYOUT="$ROOT/target/images"
CHECK="$ROOT/target/images-check"
BIN="$ROOT/target/$PROFILE"
KEYSPACE=image_check
TOPIC=image-check.events.v1
rm -rf "$CHECK"
mkdir -p "$CHECK/pki"

fail() { printf '[images] FAIL %s\n' "$*" >&2; exit 1; }
say() { printf '[images] %s\n' "$*"; }

# --- 1 and 2: configuration and content -----------------------------------------------------------------
declare -A PORTS ENVS
PORTS[gateway]="50061/tcp 8080/tcp"
ENVS[gateway]="GATEWAY_WS_ADDR=0.0.0.0:8080 GATEWAY_GRPC_ADDR=0.0.0.0:50061"
PORTS[chat-service]="50051/tcp"
ENVS[chat-service]="CHAT_GRPC_ADDR=0.0.0.0:50051"
PORTS[delivery-worker]="9100/tcp"
ENVS[delivery-worker]="WORKER_METRICS_ADDR=0.0.0.0:9100"
PORTS[chatctl]=""
ENVS[chatctl]=""

for name in gateway chat-service delivery-worker chatctl; do
  skopeo inspect --config "oci:$LAYOUT:$name" >"$CHECK/$name.config.json"
  python3 - "$CHECK/$name.config.json" "$name" "$PROFILE" "${PORTS[$name]}" "${ENVS[$name]}" <<'PY' || fail "$name: configuration"
import json, sys
path, name, profile, ports, envs = sys.argv[1:]
c = json.load(open(path))["config"]
problems = []
user = c.get("User", "")
uid = user.split(":")[0]
if uid in ("", "0", "root") or not uid.isdigit():
    problems.append(f"user {user!r} is root or not numeric")
want_ep = ["/usr/local/bin/entrypoint", f"/usr/local/bin/{name}"]
if c.get("Entrypoint") != want_ep:
    problems.append(f"entrypoint {c.get('Entrypoint')} != {want_ep}")
got_ports = sorted(c.get("ExposedPorts") or {})
if got_ports != sorted(ports.split()):
    problems.append(f"exposed ports {got_ports} != {sorted(ports.split())}")
env = c.get("Env") or []
for e in envs.split() + ["RUST_LOG=info", "SECRETS_DIR=/run/secrets"]:
    if e not in env:
        problems.append(f"env lacks {e}")
if "/run/secrets" not in (c.get("Volumes") or {}):
    problems.append("no /run/secrets volume")
if (c.get("Labels") or {}).get("chat.build-profile") != profile:
    problems.append(f"not a {profile} build")
for p in problems:
    print(f"[images] {name}: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"[images] {name}: user {user}, entrypoint {' '.join(want_ep)}, ports {' '.join(got_ports) or 'none'}, env {' '.join(e for e in env if not e.startswith('PATH='))}")
PY
  umoci unpack --rootless --image "$LAYOUT:$name" "$CHECK/$name" >/dev/null
  rootfs="$CHECK/$name/rootfs"
  cmp -s "$rootfs/usr/local/bin/$name" "$BIN/$name" || fail "$name: the image's binary is not $BIN/$name"
  # umoci keeps each file's owner in the layer; read it there (a rootless unpack makes every file ours).
  layer_owner=$(python3 - "$LAYOUT" "$name" <<'PY'
import json, sys, tarfile
layout, name = sys.argv[1:]
blob = lambda d: f"{layout}/blobs/{d.replace(':', '/')}"
index = json.load(open(f"{layout}/index.json"))
desc = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == name)
manifest = json.load(open(blob(desc["digest"])))
with tarfile.open(blob(manifest["layers"][0]["digest"])) as t:
    m = t.getmember("run/secrets")
    print(f"{m.uid}:{m.gid}:{oct(m.mode & 0o777)}")
PY
)
  [ "$layer_owner" = "10001:10001:0o700" ] || fail "$name: /run/secrets is $layer_owner, not 10001:10001 0700"
  # What a runtime does with the volume: ECS copies the image's /run/secrets, owner included, into the
  # task's volume. A rootless unpack left it ours; give it the owner the layer records.
  chown 10001:10001 "$rootfs/run/secrets"
  mkdir -p "$rootfs/proc"
  : >"$rootfs/etc/hosts"
  grep -q "BEGIN CERTIFICATE" "$rootfs/etc/ssl/certs/ca-certificates.crt" || fail "$name: no CA bundle in /etc/ssl/certs"
done
say "configurations and contents ok; /run/secrets is 10001:10001 0700 and a CA bundle in every image"

# --- 3: run them ------------------------------------------------------------------------------------------
# cmd_in NAME ENV... -- ARGS...: sets CMD to the command that runs ARGS in NAME's root filesystem as the
# image's user, with the image's environment plus ENV and nothing of ours. Every step execs the next, so a
# background "${CMD[@]}" & leaves in $! the service's own process id.
cmd_in() {
  local name="$1"; shift
  local rootfs="$CHECK/$name/rootfs" user
  local -a env
  user=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["User"])' "$CHECK/$name.config.json")
  mapfile -t env < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["config"]["Env"]))' "$CHECK/$name.config.json")
  while [ "$1" != "--" ]; do env+=("$1"); shift; done
  shift
  CMD=(/usr/bin/env -i "${env[@]}" /usr/bin/unshare --mount /bin/sh -c
    'r="$1"; shift; mount -t proc proc "$r/proc" && mount --bind /etc/hosts "$r/etc/hosts" && exec /usr/sbin/chroot --userspec="$0" "$r" "$@"'
    "$user" "$rootfs" "$@")
}

# Whatever was started is stopped when the check ends, failed or not.
STARTED=()
trap 'for p in "${STARTED[@]}"; do kill -9 "$p" 2>/dev/null || true; done' EXIT

entrypoint_of() { echo /usr/local/bin/entrypoint "/usr/local/bin/$1"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_http() { # wait_http PID URL LOG: until URL answers 200, or the process dies, or 60 s pass
  local pid="$1" url="$2" logf="$3" deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$logf" >&2; fail "exited before $url answered (log: $logf)"; }
    [ "$SECONDS" -lt "$deadline" ] || { kill -9 "$pid"; tail -20 "$logf" >&2; fail "$url did not answer within 60 s"; }
    sleep 0.2
  done
}

wait_port() { # wait_port PID PORT LOG
  local pid="$1" port="$2" logf="$3" deadline=$((SECONDS + 60))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$logf" >&2; fail "exited before listening on $port (log: $logf)"; }
    [ "$SECONDS" -lt "$deadline" ] || { kill -9 "$pid"; tail -20 "$logf" >&2; fail "nothing listened on $port within 60 s"; }
    sleep 0.2
  done
}

stop_and_expect_zero() { # stop_and_expect_zero NAME PID LOG
  local name="$1" pid="$2" logf="$3" status=0 start=$SECONDS
  kill -TERM "$pid"
  wait "$pid" || status=$?
  local -a left=()
  for p in "${STARTED[@]}"; do [ "$p" = "$pid" ] || left+=("$p"); done
  STARTED=("${left[@]}")
  [ "$status" = 0 ] || { tail -20 "$logf" >&2; fail "$name exited with $status after SIGTERM (log: $logf)"; }
  say "$name: SIGTERM, exit status 0 after $((SECONDS - start)) s"
}

for name in gateway chat-service delivery-worker chatctl; do
  # shellcheck disable=SC2046
  cmd_in "$name" -- $(entrypoint_of "$name") --help
  "${CMD[@]}" >"$CHECK/$name.help" 2>&1 || { cat "$CHECK/$name.help" >&2; fail "$name --help"; }
  grep -q '^Usage:' "$CHECK/$name.help" || fail "$name --help printed no usage"
done
say "--help runs in every image, from its own root filesystem, as user 10001"

# Throwaway internal PKI (as for mutual TLS in production: one CA, one name the services check) and an
# Ed25519 key pair for client tokens.
PKI="$CHECK/pki"
SERVER_NAME=internal.chat.test
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=image-check-ca \
  -keyout "$PKI/ca.key" -out "$PKI/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$SERVER_NAME" \
  -keyout "$PKI/svc.key" -out "$PKI/svc.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$SERVER_NAME" >"$PKI/ext.cnf"
openssl x509 -req -in "$PKI/svc.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial -days 1 \
  -extfile "$PKI/ext.cnf" -out "$PKI/svc.pem" 2>/dev/null
openssl genpkey -algorithm ed25519 -out "$PKI/jwt.key" 2>/dev/null
openssl pkey -in "$PKI/jwt.key" -pubout -out "$PKI/jwt.pub" 2>/dev/null
TLS_ENV=("GRPC_TLS_CERT_PEM=$(cat "$PKI/svc.pem")" "GRPC_TLS_KEY_PEM=$(cat "$PKI/svc.key")"
  "GRPC_TLS_CA_PEM=$(cat "$PKI/ca.pem")" "GRPC_TLS_SERVER_NAME=$SERVER_NAME")
# Kafka over TLS, as with MSK: the local broker's TLS listener (named localhost), its CA as a PEM variable.
KAFKA_TLS_ENV=(KAFKA_TLS=true "KAFKA_TLS_CA_PEM=$(cat "$TLS_DIR/ca.pem")")
# Redis over TLS, as with ElastiCache: the local Redis's TLS port, the same CA.
REDIS_TLS_ENV=("REDIS_TLS_CA_PEM=$(cat "$TLS_DIR/ca.pem")")

# The entry point's own work, seen from inside the gateway image: PEM variables become files (and leave the
# environment), a 0.0.0.0 bind gets an advertised address of this host.
cmd_in gateway "${TLS_ENV[@]}" "GATEWAY_JWT_PUBLIC_KEY_PEM=$(cat "$PKI/jwt.pub")" -- /usr/local/bin/entrypoint /bin/sh -c \
  'printf "%s|%s|%s|%s\n" "$GATEWAY_ADVERTISE_ADDR" "$GRPC_TLS_KEY_FILE" "$GATEWAY_JWT_PUBLIC_KEY_FILE" "${GRPC_TLS_KEY_PEM:-unset}"; read -r line <"$GRPC_TLS_CA_FILE"; printf "%s\n" "$line"'
probe=$("${CMD[@]}") || fail "entry point probe"
case "$probe" in
  *:50061"|/run/secrets/grpc-tls-key.pem|/run/secrets/jwt-public-key.pem|unset"*"-----BEGIN CERTIFICATE-----") ;;
  *) fail "entry point probe printed: $probe" ;;
esac
[ "${probe%%:*}" != 0.0.0.0 ] && [ "${probe%%:*}" != 127.0.0.1 ] || fail "advertised address ${probe%%|*}"
say "entry point: PEM variables written to /run/secrets and removed from the environment; advertises ${probe%%|*}"

# chatctl: the one-off tasks (keyspace and topic named for this check, reused by every run).
cmd_in chatctl "CHAT_CASSANDRA_NODES=127.0.0.1:$CASSANDRA_PORT" "CHAT_CASSANDRA_KEYSPACE=$KEYSPACE" \
  "CHAT_CASSANDRA_REPLICATION={'class': 'NetworkTopologyStrategy', 'datacenter1': 1}" -- $(entrypoint_of chatctl) migrate
"${CMD[@]}" >"$CHECK/chatctl-migrate.log" 2>&1 || { tail -20 "$CHECK/chatctl-migrate.log" >&2; fail "chatctl migrate"; }
cmd_in chatctl "${KAFKA_TLS_ENV[@]}" "CHAT_KAFKA_BROKERS=localhost:$KAFKA_TLS_PORT" "CHAT_EVENTS_TOPIC=$TOPIC" CHAT_EVENTS_PARTITIONS=2 \
  CHAT_EVENTS_REPLICATION=1 -- $(entrypoint_of chatctl) create-topics
"${CMD[@]}" >"$CHECK/chatctl-topics.log" 2>&1 || { tail -20 "$CHECK/chatctl-topics.log" >&2; fail "chatctl create-topics"; }
say "chatctl: migrate (NetworkTopologyStrategy keyspace $KEYSPACE) and create-topics ($TOPIC, Kafka over TLS to localhost) exit 0"

CHAT_PORT=$(free_port)
cmd_in chat-service "${TLS_ENV[@]}" "${KAFKA_TLS_ENV[@]}" "CHAT_GRPC_ADDR=127.0.0.1:$CHAT_PORT" "CHAT_KAFKA_BROKERS=localhost:$KAFKA_TLS_PORT" \
  "CHAT_EVENTS_TOPIC=$TOPIC" "CHAT_CASSANDRA_NODES=127.0.0.1:$CASSANDRA_PORT" "CHAT_CASSANDRA_KEYSPACE=$KEYSPACE" -- \
  $(entrypoint_of chat-service)
"${CMD[@]}" >"$CHECK/chat-service.log" 2>&1 &
chat_pid=$!
STARTED+=("$chat_pid")
wait_port "$chat_pid" "$CHAT_PORT" "$CHECK/chat-service.log"
say "chat-service: listening on 127.0.0.1:$CHAT_PORT with mutual TLS (certificates given as PEM variables), Kafka over TLS"

WS_PORT=$(free_port)
PUSH_PORT=$(free_port)
cmd_in gateway "${TLS_ENV[@]}" "GATEWAY_JWT_PUBLIC_KEY_PEM=$(cat "$PKI/jwt.pub")" GATEWAY_JWT_ALGORITHMS=EdDSA \
  "GATEWAY_WS_ADDR=127.0.0.1:$WS_PORT" "GATEWAY_GRPC_ADDR=127.0.0.1:$PUSH_PORT" \
  "GATEWAY_CHAT_SERVICE_URLS=https://127.0.0.1:$CHAT_PORT" "${REDIS_TLS_ENV[@]}" "GATEWAY_REDIS_URL=rediss://localhost:$REDIS_TLS_PORT/" \
  GATEWAY_REDIS_PREFIX=image-check: GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=100000 -- \
  $(entrypoint_of gateway)
"${CMD[@]}" >"$CHECK/gateway.log" 2>&1 &
gw_pid=$!
STARTED+=("$gw_pid")
wait_http "$gw_pid" "http://127.0.0.1:$WS_PORT/readyz" "$CHECK/gateway.log"
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
  -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' "http://127.0.0.1:$WS_PORT/v1/ws?device_id=d1&access_token=not-a-token")
[ "$code" = 401 ] || fail "gateway: an upgrade with a bad token got $code, not 401"
say "gateway: /readyz 200 on 127.0.0.1:$WS_PORT, an upgrade with a bad token 401 (JWT public key from a PEM variable), Redis over TLS"

METRICS_PORT=$(free_port)
cmd_in delivery-worker "${TLS_ENV[@]}" "${KAFKA_TLS_ENV[@]}" "WORKER_KAFKA_BROKERS=localhost:$KAFKA_TLS_PORT" "WORKER_EVENTS_TOPIC=$TOPIC" \
  "WORKER_DEAD_LETTER_TOPIC=$TOPIC.dlq" WORKER_GROUP_ID=image-check "WORKER_CASSANDRA_NODES=127.0.0.1:$CASSANDRA_PORT" \
  "WORKER_CASSANDRA_KEYSPACE=$KEYSPACE" "${REDIS_TLS_ENV[@]}" "WORKER_REDIS_URL=rediss://localhost:$REDIS_TLS_PORT/" WORKER_REDIS_PREFIX=image-check: \
  "WORKER_METRICS_ADDR=127.0.0.1:$METRICS_PORT" -- \
  $(entrypoint_of delivery-worker)
"${CMD[@]}" >"$CHECK/delivery-worker.log" 2>&1 &
worker_pid=$!
STARTED+=("$worker_pid")
wait_http "$worker_pid" "http://127.0.0.1:$METRICS_PORT/metrics" "$CHECK/delivery-worker.log"
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" | grep -q '^worker_records_total ' || fail "delivery-worker: /metrics lacks worker_records_total"
say "delivery-worker: /metrics answers on 127.0.0.1:$METRICS_PORT (Kafka and Redis over TLS)"

stop_and_expect_zero delivery-worker "$worker_pid" "$CHECK/delivery-worker.log"
stop_and_expect_zero gateway "$gw_pid" "$CHECK/gateway.log"
stop_and_expect_zero chat-service "$chat_pid" "$CHECK/chat-service.log"
say "all images pass ($PROFILE)"
