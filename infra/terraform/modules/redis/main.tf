# ElastiCache (Redis OSS or Valkey) for presence: one shard (the services' Redis client is not a cluster
# client), a primary and replicas in other zones, Multi-AZ with automatic failover, encryption at rest and
# in transit, and an AUTH token. Presence is soft state (ARCHITECTURE.md): losing it delays delivery to the
# inbox path, never loses a message.
#
# The token is generated here and written, inside the whole URL the services read, to a Secrets Manager
# secret injected as GATEWAY_REDIS_URL / WORKER_REDIS_URL. It is in the Terraform state, as ElastiCache's
# auth_token always is: keep the state encrypted and private (docs/operations.md). No output carries it.

locals {
  # With transit encryption required, clients must speak TLS (rediss://); preferred accepts both.
  scheme = var.transit_encryption_mode == "required" ? "rediss" : "redis"
  url    = "${local.scheme}://:${random_password.auth.result}@${aws_elasticache_replication_group.this.primary_endpoint_address}:${var.port}/"
}

resource "random_password" "auth" {
  length  = 64
  special = false

  keepers = {
    rotation = var.auth_token_rotation
  }
}

resource "aws_elasticache_subnet_group" "this" {
  name       = var.name
  subnet_ids = var.subnet_ids
  tags       = var.tags
}

resource "aws_cloudwatch_log_group" "slow" {
  name              = "/elasticache/${var.name}/slow-log"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_elasticache_replication_group" "this" {
  replication_group_id       = var.name
  description                = "${var.name}: presence of the chat platform"
  engine                     = var.engine
  engine_version             = var.engine_version
  node_type                  = var.node_type
  port                       = var.port
  num_node_groups            = 1
  replicas_per_node_group    = var.replicas
  multi_az_enabled           = true
  automatic_failover_enabled = true
  subnet_group_name          = aws_elasticache_subnet_group.this.name
  security_group_ids         = [var.security_group_id]
  at_rest_encryption_enabled = true
  kms_key_id                 = var.kms_key_arn
  transit_encryption_enabled = true
  transit_encryption_mode    = var.transit_encryption_mode
  auth_token                 = random_password.auth.result
  auth_token_update_strategy = "ROTATE"
  auto_minor_version_upgrade = true
  maintenance_window         = var.maintenance_window
  # Presence is soft state, rewritten by the gateways every third of its TTL: no snapshot to restore.
  snapshot_retention_limit = 0
  apply_immediately        = false

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.slow.name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }

  tags = var.tags
}

resource "aws_secretsmanager_secret" "url" {
  #checkov:skip=CKV2_AWS_57:the AUTH token is rotated through Terraform (auth_token_rotation, ElastiCache's ROTATE strategy keeps both tokens valid meanwhile); a rotation Lambda would fight the state
  name                    = "${var.name}/redis-url"
  description             = "Redis URL with the AUTH token: GATEWAY_REDIS_URL and WORKER_REDIS_URL"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.recovery_window_in_days
  tags                    = var.tags
}

resource "aws_secretsmanager_secret_version" "url" {
  secret_id     = aws_secretsmanager_secret.url.id
  secret_string = local.url
}
