# Delivery workers on ECS Fargate: no load balancer (they consume the log and push to gateways). All share
# one consumer group, so each partition of the events topic has one worker at a time: a worker beyond the
# partition count would sit idle, so the counts are held to at most `events_partitions`, deployments
# included (deployment_maximum_percent 100: a rolling deployment stops a worker before starting its
# replacement, and never runs more workers than partitions).

locals {
  environment_all = {
    WORKER_KAFKA_BROKERS         = var.kafka_bootstrap_brokers
    KAFKA_TLS                    = tostring(var.kafka_tls)
    WORKER_EVENTS_TOPIC          = var.events_topic
    WORKER_DEAD_LETTER_TOPIC     = coalesce(var.dead_letter_topic, "${var.events_topic}.dlq")
    WORKER_GROUP_ID              = var.group_id
    WORKER_CASSANDRA_NODES       = join(",", var.cassandra_contact_points)
    WORKER_CASSANDRA_KEYSPACE    = var.keyspace
    WORKER_REDIS_PREFIX          = var.redis_prefix
    WORKER_PUSH_TIMEOUT_MS       = tostring(var.push_timeout_ms)
    WORKER_MESSAGE_TTL_SECS      = tostring(var.message_ttl_secs)
    WORKER_MEMBERS_CACHE_MS      = tostring(var.members_cache_ms)
    WORKER_DEVICES_CACHE_MS      = tostring(var.devices_cache_ms)
    WORKER_CURSOR_SAVE_MS        = tostring(var.cursor_save_ms)
    WORKER_GROUP_WEDGED_AFTER_MS = tostring(var.group_wedged_after_ms)
    WORKER_METRICS_ADDR          = "0.0.0.0:${var.metrics_port}"
    GRPC_TLS_SERVER_NAME         = var.grpc_tls == null ? null : var.grpc_tls_server_name
    RUST_LOG                     = var.rust_log
  }
  environment = { for k, v in local.environment_all : k => v if v != null }

  secrets_all = {
    WORKER_REDIS_URL  = var.redis_url_secret_arn
    GRPC_TLS_CERT_PEM = var.grpc_tls == null ? null : var.grpc_tls.cert_arn
    GRPC_TLS_KEY_PEM  = var.grpc_tls == null ? null : var.grpc_tls.key_arn
    GRPC_TLS_CA_PEM   = var.grpc_tls == null ? null : var.grpc_tls.ca_arn
  }
  secrets = { for k, v in local.secrets_all : k => v if v != null }
}

module "service" {
  source = "../ecs-service"

  name               = var.name
  cluster_arn        = var.cluster_arn
  image              = var.image
  cpu                = var.cpu
  memory             = var.memory
  environment        = local.environment
  secrets            = local.secrets
  subnet_ids         = var.subnet_ids
  security_group_ids = [var.security_group_id]
  kms_key_arn        = var.kms_key_arn
  log_retention_days = var.log_retention_days
  # A worker finishes the record in hand and commits its offsets after SIGTERM.
  stop_timeout = 60

  port_mappings = [{ name = "metrics", container_port = var.metrics_port }]

  desired_count                      = var.desired_count
  min_count                          = var.min_count
  max_count                          = var.max_count
  cpu_target                         = var.cpu_target
  deployment_minimum_healthy_percent = 50
  deployment_maximum_percent         = 100

  tags = var.tags
}

# The partition bound, checked where Terraform can compare two inputs.
resource "terraform_data" "partition_bound" {
  input = var.events_partitions

  lifecycle {
    precondition {
      condition     = var.max_count <= var.events_partitions && var.desired_count <= var.events_partitions
      error_message = "desired_count and max_count must not exceed events_partitions: a worker beyond the topic's partitions gets none."
    }
  }
}
