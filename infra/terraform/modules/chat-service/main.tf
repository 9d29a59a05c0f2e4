# Chat services on ECS Fargate, internal: gateways reach them over gRPC by a private DNS name (Cloud Map, one
# A record per healthy task), with mutual TLS end to end. There is no load balancer in between: an ALB would
# end TLS and could not present the client certificate the services require of each other. Each gateway opens
# several connections to the name (the gateway module's chat_service_channels), each resolved separately,
# and moves a call to another connection when a task stops answering.

locals {
  environment_all = {
    CHAT_GRPC_ADDR                = "0.0.0.0:${var.grpc_port}"
    CHAT_KAFKA_BROKERS            = var.kafka_bootstrap_brokers
    KAFKA_TLS                     = tostring(var.kafka_tls)
    CHAT_EVENTS_TOPIC             = var.events_topic
    CHAT_CASSANDRA_NODES          = join(",", var.cassandra_contact_points)
    CHAT_CASSANDRA_KEYSPACE       = var.keyspace
    CHAT_SEND_TIMEOUT_MS          = tostring(var.send_timeout_ms)
    CHAT_STORE_TIMEOUT_MS         = tostring(var.store_timeout_ms)
    CHAT_MESSAGE_TTL_SECS         = tostring(var.message_ttl_secs)
    CHAT_MEMBERS_CACHE_MS         = tostring(var.members_cache_ms)
    CHAT_OWNER_GROUP_ID           = var.owner_group_id
    CHAT_PROJECTOR_GROUP_ID       = var.worker_group_id
    CHAT_TRANSACTION_TIMEOUT_MS   = tostring(var.transaction_timeout_ms)
    CHAT_OWNER_SESSION_TIMEOUT_MS = tostring(var.owner_session_timeout_ms)
    CHAT_METRICS_ADDR             = "0.0.0.0:${var.metrics_port}"
    GRPC_TLS_SERVER_NAME          = var.grpc_tls == null ? null : var.grpc_tls_server_name
    RUST_LOG                      = var.rust_log
  }
  environment = { for k, v in local.environment_all : k => v if v != null }

  secrets_all = {
    GRPC_TLS_CERT_PEM = var.grpc_tls == null ? null : var.grpc_tls.cert_arn
    GRPC_TLS_KEY_PEM  = var.grpc_tls == null ? null : var.grpc_tls.key_arn
    GRPC_TLS_CA_PEM   = var.grpc_tls == null ? null : var.grpc_tls.ca_arn
  }
  secrets = { for k, v in local.secrets_all : k => v if v != null }

  dns_name = "${var.discovery_name}.${var.namespace_name}"
}

resource "aws_service_discovery_service" "this" {
  name = var.discovery_name

  dns_config {
    namespace_id   = var.namespace_id
    routing_policy = "MULTIVALUE"

    dns_records {
      type = "A"
      ttl  = 10
    }
  }

  # ECS reports the tasks' health: a stopping or failed task leaves the answers.
  health_check_custom_config {
    failure_threshold = 1
  }

  tags = var.tags
}

module "service" {
  source = "../ecs-service"

  name                 = var.name
  cluster_arn          = var.cluster_arn
  image                = var.image
  cpu                  = var.cpu
  memory               = var.memory
  environment          = local.environment
  secrets              = local.secrets
  subnet_ids           = var.subnet_ids
  security_group_ids   = [var.security_group_id]
  kms_key_arn          = var.kms_key_arn
  log_retention_days   = var.log_retention_days
  service_registry_arn = aws_service_discovery_service.this.arn
  # The chat service finishes the calls in flight after SIGTERM (each bounded by CHAT_SEND_TIMEOUT_MS).
  stop_timeout = 30

  port_mappings = [
    { name = "grpc", container_port = var.grpc_port },
    { name = "metrics", container_port = var.metrics_port },
  ]

  desired_count = var.desired_count
  min_count     = var.min_count
  max_count     = var.max_count
  cpu_target    = var.cpu_target

  tags = var.tags
}
