#!/usr/bin/env bash
# Starts, stops and reports the three real servers on 127.0.0.1: Kafka (one KRaft node), Cassandra and Redis.
#   servers.sh up [kafka|cassandra|redis|kafka3|kafka3-N ...]    start what is not running yet (kafka,
#                                                                 cassandra and redis by default), wait until ready
#   servers.sh down [kafka|cassandra|redis|kafka3|kafka3-N ...]  stop what this script started
#   servers.sh status
# kafka3 is a second Kafka of three KRaft nodes (each broker and controller; node N, 1 to 3, is kafka3-N,
# on port KAFKA3_PORT+N), only started when asked: the fault scenario of a broker killed under load uses it.
# Data and logs live under .local/ in the repository (ignored by git). Running `up` again reuses what is up.
set -euo pipefail
source "$(dirname "$0")/env.sh"

pidfile() { echo "$RUN/$1.pid"; }

running() {
  local pf; pf=$(pidfile "$1")
  [ -f "$pf" ] && kill -0 "$(cat "$pf")" 2>/dev/null
}

# gc_flags LOGDIR: the collector of the two JVMs. G1's default pause goal (200 ms) lets it grow the young
# generation until a pause costs tens of milliseconds (Cassandra's reached 73 ms every 25 s under the 1:1 benchmark
# on this 2-core box), and every request in flight waits that long; 20 ms, Kafka's own default, keeps young
# collections short and frequent. Pauses go to LOGDIR/gc.log (rotated) to be checked after a benchmark.
gc_flags() {
  echo "-XX:+UseG1GC -XX:MaxGCPauseMillis=${JVM_GC_PAUSE_MS:-20} -XX:InitiatingHeapOccupancyPercent=35"
  echo "-Xlog:gc:file=$1/gc.log:time,uptime:filecount=3,filesize=10m"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

fill() { # fill TEMPLATE OUT: replace @VARS@ with the values of this script's variables
  sed -e "s#@DATA@#$DATA#g" -e "s#@KAFKA_PORT@#$KAFKA_PORT#g" -e "s#@KAFKA_CONTROLLER_PORT@#$KAFKA_CONTROLLER_PORT#g" \
      -e "s#@KAFKA_TLS_PORT@#$KAFKA_TLS_PORT#g" -e "s#@TLS_DIR@#$TLS_DIR#g" \
      -e "s#@CASSANDRA_PORT@#$CASSANDRA_PORT#g" -e "s#@CASSANDRA_STORAGE_PORT@#$CASSANDRA_STORAGE_PORT#g" "$1" >"$2"
}

# wait_ready NAME SECONDS LOGFILE CHECK...: poll CHECK until it succeeds; on timeout or death, show the log's tail.
wait_ready() {
  local name="$1" secs="$2" logfile="$3"; shift 3
  local deadline=$((SECONDS + secs))
  while ! "$@"; do
    if ! running "$name"; then
      tail -40 "$logfile" >&2 || true
      die "$name exited while starting (log: $logfile)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -40 "$logfile" >&2 || true
      die "$name was not ready within ${secs}s (log: $logfile)"
    fi
    sleep 0.5
  done
  log "$name ready"
}

kafka_ready() {
  grep -q "Kafka Server started" "$LOGS/kafka/server.log" 2>/dev/null && port_open "$KAFKA_PORT" && port_open "$KAFKA_TLS_PORT"
}

# The TLS listeners' CA and certificate (for localhost and 127.0.0.1; Kafka's and Redis's), made once with
# openssl. Kafka reads the key and the certificate from one PEM file as its keystore (PKCS#8, unencrypted: a
# local test listener); Redis reads them apart.
tls_material() {
  local dir="$TLS_DIR"
  [ -s "$dir/server.pem" ] && [ -s "$dir/ca.pem" ] && return
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 -subj "/CN=chat local kafka CA"
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.crt -days 3650 -extfile san.ext
    openssl pkcs8 -topk8 -nocrypt -in server.key -out server.p8
    cat server.p8 server.crt >server.pem
  ) >"$LOGS/tls.log" 2>&1 || { cat "$LOGS/tls.log" >&2; die "making the local TLS certificate failed"; }
  log "the local TLS listeners' CA: $dir/ca.pem"
}

start_kafka() {
  running kafka && port_open "$KAFKA_PORT" && port_open "$KAFKA_TLS_PORT" && { log "kafka already up on $KAFKA_PORT"; return; }
  # Started by an older checkout, without the TLS listener: restarted with it.
  running kafka && port_open "$KAFKA_PORT" && stop_one kafka
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by a process this script did not start"
  local conf="$RUN/kafka.properties" cp="$LIB/kafka/*"
  mkdir -p "$DATA/kafka" "$LOGS/kafka"
  tls_material
  fill "$ROOT/infra/local/conf/kafka.properties.in" "$conf"
  if [ ! -f "$DATA/kafka/meta.properties" ]; then
    local id; id=$("$JAVA" -cp "$cp" kafka.tools.StorageTool random-uuid 2>>"$LOGS/kafka/format.log" | tail -1)
    "$JAVA" -cp "$cp" -Dlog4j2.configurationFile="file:$ROOT/infra/local/conf/log4j2.properties" -Dkafka.logs.dir="$LOGS/kafka" \
      kafka.tools.StorageTool format -t "$id" -c "$conf" --ignore-formatted >>"$LOGS/kafka/format.log" 2>&1 \
      || { tail -20 "$LOGS/kafka/format.log" >&2; die "kafka storage format failed"; }
  fi
  : >"$LOGS/kafka/server.log"
  log "starting kafka on 127.0.0.1:$KAFKA_PORT"
  setsid nohup "$JAVA" -Xms1g -Xmx1g $(gc_flags "$LOGS/kafka") -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="file:$ROOT/infra/local/conf/log4j2.properties" -Dkafka.logs.dir="$LOGS/kafka" \
    -cp "$cp" kafka.Kafka "$conf" >"$LOGS/kafka/stdout.log" 2>&1 &
  echo $! >"$(pidfile kafka)"
  wait_ready kafka "${KAFKA_START_TIMEOUT:-120}" "$LOGS/kafka/server.log" kafka_ready
}

kafka3_port() { echo $((KAFKA3_PORT + $1)); }
kafka3_controller_port() { echo $((KAFKA3_PORT + 10 + $1)); }

# One node of the three-node cluster; its storage is formatted once with the cluster's shared id.
start_kafka3_node() {
  local n="$1" name="kafka3-$1" port; port=$(kafka3_port "$1")
  running "$name" && port_open "$port" && { log "$name already up on $port"; return; }
  port_open "$port" && die "port $port is taken by a process this script did not start"
  local conf="$RUN/$name.properties" cp="$LIB/kafka/*" dir="$DATA/kafka3/node$n" logs="$LOGS/kafka3/node$n"
  local voters="" i
  for i in 1 2 3; do voters="$voters${voters:+,}$i@127.0.0.1:$(kafka3_controller_port "$i")"; done
  mkdir -p "$dir" "$logs"
  sed -e "s#@NODE@#$n#g" -e "s#@VOTERS@#$voters#g" -e "s#@PORT@#$port#g" \
      -e "s#@CONTROLLER_PORT@#$(kafka3_controller_port "$n")#g" -e "s#@DIR@#$dir#g" \
      "$ROOT/infra/local/conf/kafka3.properties.in" >"$conf"
  if [ ! -f "$dir/meta.properties" ]; then
    "$JAVA" -cp "$cp" -Dlog4j2.configurationFile="file:$ROOT/infra/local/conf/log4j2.properties" -Dkafka.logs.dir="$logs" \
      kafka.tools.StorageTool format -t "$(cat "$DATA/kafka3/cluster-id")" -c "$conf" --ignore-formatted \
      >>"$logs/format.log" 2>&1 || { tail -20 "$logs/format.log" >&2; die "$name storage format failed"; }
  fi
  : >"$logs/server.log"
  log "starting $name on 127.0.0.1:$port"
  setsid nohup "$JAVA" -Xms384m -Xmx384m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="file:$ROOT/infra/local/conf/log4j2.properties" -Dkafka.logs.dir="$logs" \
    -cp "$cp" kafka.Kafka "$conf" >"$logs/stdout.log" 2>&1 &
  echo $! >"$(pidfile "$name")"
  # A node is ready once the quorum has a leader, which takes two of the three: they start in parallel.
  wait_ready "$name" "${KAFKA_START_TIMEOUT:-120}" "$logs/server.log" kafka3_node_ready "$n"
}

kafka3_node_ready() {
  grep -q "Kafka Server started" "$LOGS/kafka3/node$1/server.log" 2>/dev/null && port_open "$(kafka3_port "$1")"
}

start_kafka3() {
  mkdir -p "$DATA/kafka3"
  if [ ! -s "$DATA/kafka3/cluster-id" ]; then
    "$JAVA" -cp "$LIB/kafka/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1 >"$DATA/kafka3/cluster-id"
  fi
  local pids=() p rc=0
  for n in 1 2 3; do start_kafka3_node "$n" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ "$rc" -eq 0 ] || die "the three-node kafka did not start"
}

cassandra_ready() { port_open "$CASSANDRA_PORT"; }

start_cassandra() {
  running cassandra && port_open "$CASSANDRA_PORT" && { log "cassandra already up on $CASSANDRA_PORT"; return; }
  port_open "$CASSANDRA_PORT" && die "port $CASSANDRA_PORT is taken by a process this script did not start"
  local conf="$RUN/cassandra.yaml"
  mkdir -p "$DATA/cassandra" "$LOGS/cassandra"
  fill "$ROOT/infra/local/conf/cassandra.yaml.in" "$conf"
  log "starting cassandra on 127.0.0.1:$CASSANDRA_PORT"
  # The module flags are those of Cassandra 5.0's conf/jvm17-server.options, which Java 17 needs.
  # Timer slack: Cassandra's shared request pool keeps idle workers "spinning" in parks of 10 µs to 1 ms,
  # which with Linux's default 50 µs slack cost 35,000 context switches and 0.2 core a second at 500
  # messages/s on this 2-core box (measured: its CPU per message halves with 1 ms). The slack delays only
  # timed waits, so a spinning worker takes new work up to 1 ms later; every signalled wake is immediate.
  # Set on the shell that execs the JVM, it is inherited by every thread (kernels without the file skip it).
  setsid nohup bash -c 'echo "$0" >/proc/self/timerslack_ns 2>/dev/null; exec "$@"' "${CASSANDRA_TIMER_SLACK_NS:-1000000}" \
    "$JAVA" -Xms1g -Xmx1g -Xss512k $(gc_flags "$LOGS/cassandra") -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 \
    -XX:G1HeapRegionSize=16m -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$LOGS/cassandra" \
    -Djava.net.preferIPv4Stack=true -Djdk.attach.allowAttachSelf=true -Dio.netty.tryReflectionSetAccessible=true \
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
    --add-exports java.sql/java.sql=ALL-UNNAMED --add-exports java.base/java.lang.ref=ALL-UNNAMED \
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED \
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED \
    --add-opens java.base/java.lang.module=ALL-UNNAMED --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED --add-opens java.base/java.io=ALL-UNNAMED \
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED \
    --add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.util=ALL-UNNAMED \
    -Dcassandra.config="file://$conf" -Dcassandra-foreground=yes -Dcassandra.storagedir="$DATA/cassandra" \
    -Dcassandra.logdir="$LOGS/cassandra" -Dlogback.configurationFile="$ROOT/infra/local/conf/logback.xml" \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=100 -Dcassandra.initial_token=0 \
    -cp "$LIB/cassandra/*" org.apache.cassandra.service.CassandraDaemon >"$LOGS/cassandra/stdout.log" 2>&1 &
  echo $! >"$(pidfile cassandra)"
  wait_ready cassandra "${CASSANDRA_START_TIMEOUT:-240}" "$LOGS/cassandra/system.log" cassandra_ready
}

redis_ready() { redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && port_open "$REDIS_TLS_PORT"; }

start_redis() {
  running redis && redis_ready && { log "redis already up on $REDIS_PORT"; return; }
  # Started by an older checkout, without the TLS port: restarted with it.
  running redis && stop_one redis
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by a process this script did not start"
  mkdir -p "$DATA/redis" "$LOGS/redis"
  tls_material
  log "starting redis on 127.0.0.1:$REDIS_PORT (TLS on $REDIS_TLS_PORT)"
  # Presence is soft state: no persistence. The TLS port serves the tests of rediss:// (no client certificates).
  setsid nohup redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$DATA/redis" \
    --tls-port "$REDIS_TLS_PORT" --tls-cert-file "$TLS_DIR/server.crt" --tls-key-file "$TLS_DIR/server.key" \
    --tls-ca-cert-file "$TLS_DIR/ca.pem" --tls-auth-clients no \
    --maxclients 10000 --logfile "$LOGS/redis/redis.log" >/dev/null 2>&1 &
  echo $! >"$(pidfile redis)"
  wait_ready redis "${REDIS_START_TIMEOUT:-30}" "$LOGS/redis/redis.log" redis_ready
}

stop_one() {
  local name="$1" pf; pf=$(pidfile "$1")
  if running "$name"; then
    local pid; pid=$(cat "$pf")
    log "stopping $name ($pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pf"
}

cmd="${1:-status}"; shift || true
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(redis kafka cassandra)
  # `down` also stops the three-node Kafka if a scenario left it running.
  [ "$cmd" = down ] && names+=(kafka3)
fi
case "$cmd" in
  up)
    "$ROOT/infra/local/install.sh"
    # Made here, once, before Kafka and Redis start in parallel and both read it.
    tls_material
    # Kafka and Cassandra start in parallel: together they take as long as the slower one.
    pids=()
    for n in "${names[@]}"; do
      case "$n" in
        kafka|cassandra|redis|kafka3) "start_$n" & pids+=($!) ;;
        kafka3-[123]) start_kafka3_node "${n#kafka3-}" & pids+=($!) ;;
        *) die "unknown server $n" ;;
      esac
    done
    rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done
    [ "$rc" -eq 0 ] || die "a server failed to start"
    ;;
  down)
    for n in "${names[@]}"; do
      case "$n" in
        kafka3) for i in 1 2 3; do stop_one "kafka3-$i" & done; wait ;;
        *) stop_one "$n" ;;
      esac
    done ;;
  status)
    for n in redis kafka cassandra kafka3-1 kafka3-2 kafka3-3; do
      if running "$n"; then echo "$n: running (pid $(cat "$(pidfile "$n")"))"
      elif [[ "$n" != kafka3-* ]]; then echo "$n: stopped"; fi
    done ;;
  *) die "usage: servers.sh up|down|status [kafka|cassandra|redis|kafka3|kafka3-N ...]" ;;
esac
