#!/usr/bin/env bash
# Starts and stops the platform's own services on 127.0.0.1, as separate processes:
# one chat service, two gateways and two delivery workers (counts can be changed by the variables below).
#   platform.sh up     build, migrate the keyspace, create the topics, start what is not running
#   platform.sh down   stop what this script started (SIGTERM: graceful), then SIGKILL stragglers
#   platform.sh status
# PLATFORM_BIN names the folder of the binaries (default target/debug, which `up` builds; target/release
# runs a release build made beforehand, as when measuring CPU at rest).
# Expects the servers from servers.sh to be up.
set -euo pipefail
source "$(dirname "$0")/env.sh"

CHAT_SERVICES="${CHAT_SERVICES:-1}"
GATEWAYS="${GATEWAYS:-2}"
WORKERS="${WORKERS:-2}"
KEYSPACE="${CHAT_CASSANDRA_KEYSPACE:-chat}"
TOPIC="${CHAT_EVENTS_TOPIC:-chat.events.v1}"
# One partition per process that reads or writes them (each worker and each chat service gets one): a chat
# service commits a transaction per partition it owns, so more partitions than that on one machine only
# make each transaction carry fewer records (docs/operations.md, "Choose the partition count"). A topic
# that exists keeps its count.
PARTITIONS="${CHAT_EVENTS_PARTITIONS:-$((WORKERS > CHAT_SERVICES ? WORKERS : CHAT_SERVICES))}"
BIN="${PLATFORM_BIN:-$ROOT/target/debug}"

secret_file="$RUN/jwt-secret"
if [ ! -s "$secret_file" ]; then
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret_file"
  chmod 600 "$secret_file"
fi
export GATEWAY_JWT_SECRET; GATEWAY_JWT_SECRET="$(cat "$secret_file")"

alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() { # start NAME COMMAND...: run in the background with its log, unless already running
  local name="$1"; shift
  if alive "$name"; then log "$name already running"; return; fi
  setsid nohup "$@" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

wait_port() { # wait_port NAME PORT
  local deadline=$((SECONDS + 60))
  until (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; do
    alive "$1" || { tail -20 "$LOGS/$1.log" >&2; die "$1 exited while starting (log: $LOGS/$1.log)"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -20 "$LOGS/$1.log" >&2; die "$1 did not listen on $2 within 60s"; }
    sleep 0.2
  done
}

up() {
  log "building the services"
  (cd "$ROOT" && cargo build -q --bins) || die "build failed"
  export CHAT_CASSANDRA_NODES="127.0.0.1:$CASSANDRA_PORT" CHAT_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
  "$BIN/chatctl" migrate --keyspace "$KEYSPACE"
  "$BIN/chatctl" create-topics --topic "$TOPIC" --partitions "$PARTITIONS"

  local chat_urls=()
  for i in $(seq 1 "$CHAT_SERVICES"); do
    local port=$((50050 + i))
    start "chat-service-$i" env CHAT_GRPC_ADDR="127.0.0.1:$port" CHAT_CASSANDRA_KEYSPACE="$KEYSPACE" \
      CHAT_EVENTS_TOPIC="$TOPIC" CHAT_METRICS_ADDR="127.0.0.1:$((9110 + i))" "$BIN/chat-service"
    wait_port "chat-service-$i" "$port"
    chat_urls+=("http://127.0.0.1:$port")
  done
  local urls; urls=$(IFS=,; echo "${chat_urls[*]}")
  # The web chat (clients/web) needs the SDK built; without Node.js 20 the gateways serve no /app/.
  local web=()
  if "$ROOT/infra/local/node-deps.sh" --build clients/js; then
    web=(GATEWAY_WEB_DIR="$ROOT/clients/web")
  else
    log "the web chat is not served (it needs Node.js 20 to build clients/js)"
  fi
  for i in $(seq 1 "$GATEWAYS"); do
    local ws=$((8079 + i)) grpc=$((50060 + i))
    start "gateway-$i" env GATEWAY_WS_ADDR="127.0.0.1:$ws" GATEWAY_GRPC_ADDR="127.0.0.1:$grpc" \
      GATEWAY_METRICS_ADDR="127.0.0.1:$((9100 + i))" GATEWAY_CHAT_SERVICE_URLS="$urls" GATEWAY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" "${web[@]}" "$BIN/gateway"
    wait_port "gateway-$i" "$ws"
  done
  for i in $(seq 1 "$WORKERS"); do
    start "delivery-worker-$i" env WORKER_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT" WORKER_EVENTS_TOPIC="$TOPIC" \
      WORKER_DEAD_LETTER_TOPIC="$TOPIC.dlq" WORKER_CASSANDRA_NODES="127.0.0.1:$CASSANDRA_PORT" \
      WORKER_CASSANDRA_KEYSPACE="$KEYSPACE" WORKER_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" \
      WORKER_METRICS_ADDR="127.0.0.1:$((9120 + i))" "$BIN/delivery-worker"
  done
  sleep 1
  for i in $(seq 1 "$WORKERS"); do
    alive "delivery-worker-$i" || { tail -20 "$LOGS/delivery-worker-$i.log" >&2; die "delivery-worker-$i exited"; }
  done

  # Two demo users in one conversation (made once; kept with the data), and a sign-in link for each.
  local demo_file="$DATA/demo-conversation" demo=""
  [ -s "$demo_file" ] && demo=$(cat "$demo_file")
  if [ -z "$demo" ]; then
    demo=$(CHAT_SERVICE_URL="${chat_urls[0]}" "$BIN/chatctl" conversation --by alice --member bob) \
      || die "could not create the demo conversation"
    echo "$demo" >"$demo_file"
  fi
  local links=""
  if [ ${#web[@]} -gt 0 ]; then
    local alice bob
    alice=$("$BIN/chatctl" token --user alice --ttl-secs 86400)
    bob=$("$BIN/chatctl" token --user bob --ttl-secs 86400)
    links="Chat in a browser (alice and bob, conversation $demo; links valid 24 h):
  alice on gateway 1 : http://127.0.0.1:8080/app/#token=$alice&device=web
  bob on gateway $GATEWAYS   : http://127.0.0.1:$((8079 + GATEWAYS))/app/#token=$bob&device=web
"
  fi

  cat <<EOT

The platform is up on 127.0.0.1.
$links
  WebSocket gateways : $(for i in $(seq 1 "$GATEWAYS"); do printf 'ws://127.0.0.1:%s/v1/ws  ' $((8079 + i)); done)
  chat service (gRPC): ${chat_urls[*]}
  GET /metrics       : gateways 127.0.0.1:9101.., chat services 127.0.0.1:9111.., workers 127.0.0.1:9121..
  Kafka $KAFKA_PORT, Cassandra $CASSANDRA_PORT, Redis $REDIS_PORT; logs in $LOGS
  Token secret       : $secret_file (GATEWAY_JWT_SECRET)
Make a token:          GATEWAY_JWT_SECRET=\$(cat $secret_file) target/debug/chatctl token --user alice
Make a conversation:   target/debug/chatctl conversation --by alice --member bob
Stop everything:       make down
EOT
}

down() {
  local names=()
  for f in "$RUN"/chat-service-*.pid "$RUN"/gateway-*.pid "$RUN"/delivery-worker-*.pid; do
    [ -e "$f" ] && names+=("$(basename "$f" .pid)")
  done
  for n in "${names[@]}"; do
    alive "$n" && { log "stopping $n"; kill "$(cat "$RUN/$n.pid")" 2>/dev/null || true; }
  done
  for n in "${names[@]}"; do
    for _ in $(seq 1 100); do alive "$n" || break; sleep 0.1; done
    alive "$n" && kill -9 "$(cat "$RUN/$n.pid")" 2>/dev/null || true
    rm -f "$RUN/$n.pid"
  done
}

case "${1:-status}" in
  up) up ;;
  down) down ;;
  status)
    for f in "$RUN"/chat-service-*.pid "$RUN"/gateway-*.pid "$RUN"/delivery-worker-*.pid; do
      [ -e "$f" ] || continue
      n=$(basename "$f" .pid)
      if alive "$n"; then echo "$n: running (pid $(cat "$f"))"; else echo "$n: stopped"; fi
    done ;;
  *) die "usage: platform.sh up|down|status" ;;
esac
