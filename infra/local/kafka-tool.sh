#!/usr/bin/env bash
# Runs one of the Kafka command-line tools that Kafka's tarball ships as bin/kafka-*.sh, from the jars that
# infra/local/install.sh resolved (kafka-tools), against the local broker unless told otherwise.
#   kafka-tool.sh console-consumer --topic chat.events.v1 --from-beginning --property print.headers=true
#   kafka-tool.sh topics --describe --topic chat.events.v1
#   kafka-tool.sh consumer-groups --describe --group delivery-worker
# --bootstrap-server 127.0.0.1:$KAFKA_PORT is added when no --bootstrap-server is given.
set -euo pipefail
source "$(dirname "$0")/env.sh"

[ $# -ge 1 ] || die "usage: kafka-tool.sh console-consumer|console-producer|topics|consumer-groups|get-offsets [ARGS...]"
tool="$1"; shift
case "$tool" in
  console-consumer) class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
  console-producer) class=org.apache.kafka.tools.ConsoleProducer ;;
  topics) class=org.apache.kafka.tools.TopicCommand ;;
  consumer-groups) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
  get-offsets) class=org.apache.kafka.tools.GetOffsetShell ;;
  *) die "unknown tool $tool (console-consumer, console-producer, topics, consumer-groups, get-offsets)" ;;
esac
compgen -G "$LIB/kafka/kafka-tools-[0-9]*.jar" >/dev/null || "$ROOT/infra/local/install.sh"
args=("$@")
[[ " $* " == *" --bootstrap-server "* ]] || args+=(--bootstrap-server "127.0.0.1:$KAFKA_PORT")
exec "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$ROOT/infra/local/conf/log4j2-tools.properties" \
  -cp "$LIB/kafka/*" "$class" "${args[@]}"
