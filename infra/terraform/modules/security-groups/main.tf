# One security group per tier, and every rule between them in this file: who may reach what is read here.
#   clients        -> nlb              443
#   nlb            -> gateway          ws_port
#   gateway        -> chat_service     chat_service_grpc_port
#   chat_service   -> chat_service     chat_service_grpc_port (writes forwarded to a partition's owner)
#   delivery_worker-> gateway          gateway_push_port
#   chat_service, delivery_worker, chatctl -> kafka (kafka_port), scylla (cql_ports)
#   gateway, delivery_worker               -> redis (redis_port)
#   scrapers       -> delivery_worker  worker_metrics_port
#   scrapers       -> chat_service     chat_service_metrics_port
#   scylla         -> scylla           7000 (inter-node)
# Tasks also reach AWS APIs on 443 (image pull, Secrets Manager, CloudWatch Logs) through NAT or VPC endpoints.

locals {
  tiers = ["nlb", "gateway", "chat_service", "delivery_worker", "chatctl", "kafka", "scylla", "redis"]

  descriptions = {
    nlb             = "gateway network load balancer: wss from clients"
    gateway         = "gateway tasks"
    chat_service    = "chat-service tasks"
    delivery_worker = "delivery-worker tasks"
    chatctl         = "chatctl one-off tasks (migrate, create-topics)"
    kafka           = "MSK brokers"
    scylla          = "ScyllaDB nodes"
    redis           = "ElastiCache presence"
  }

  # Who reaches the log and the store.
  data_clients   = ["chat_service", "delivery_worker", "chatctl"]
  kafka_ingress  = { for c in local.data_clients : c => c }
  scylla_ingress = merge([for c in local.data_clients : { for p in var.cql_ports : "${c}-${p}" => { from = c, port = p } }]...)
  redis_ingress  = { gateway = "gateway", delivery_worker = "delivery_worker" }
  aws_api_egress = ["gateway", "chat_service", "delivery_worker", "chatctl", "scylla"]

  # Who serves GET /metrics, on which port; every scraper reaches each of them.
  metrics_ports = {
    gateway         = var.gateway_metrics_port
    chat_service    = var.chat_service_metrics_port
    delivery_worker = var.worker_metrics_port
  }
  metrics_ingress = merge([for tier in keys(local.metrics_ports) : {
    for sg in var.metrics_source_security_group_ids : "${tier}-${sg}" => { tier = tier, scraper = sg }
  }]...)
}

resource "aws_security_group" "this" {
  #checkov:skip=CKV2_AWS_5:every group is attached by the module that creates its tier (ECS services, MSK, ElastiCache, the NLB, ScyllaDB's network interfaces) through this module's outputs
  for_each = toset(local.tiers)

  name_prefix = "${var.name}-${replace(each.key, "_", "-")}-"
  description = "${var.name}: ${local.descriptions[each.key]}"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-${replace(each.key, "_", "-")}" })

  lifecycle {
    create_before_destroy = true
  }
}

# --- clients -> nlb -> gateway -----------------------------------------------------------------------------
resource "aws_vpc_security_group_ingress_rule" "nlb_from_clients" {
  for_each = toset(var.client_cidr_blocks)

  security_group_id = aws_security_group.this["nlb"].id
  description       = "wss from clients"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "nlb_to_gateway" {
  security_group_id            = aws_security_group.this["nlb"].id
  description                  = "WebSocket traffic and health checks to the gateways"
  referenced_security_group_id = aws_security_group.this["gateway"].id
  ip_protocol                  = "tcp"
  from_port                    = var.gateway_ws_port
  to_port                      = var.gateway_ws_port
}

resource "aws_vpc_security_group_ingress_rule" "gateway_ws" {
  security_group_id            = aws_security_group.this["gateway"].id
  description                  = "WebSocket traffic and /readyz health checks from the load balancer"
  referenced_security_group_id = aws_security_group.this["nlb"].id
  ip_protocol                  = "tcp"
  from_port                    = var.gateway_ws_port
  to_port                      = var.gateway_ws_port
}

resource "aws_vpc_security_group_ingress_rule" "gateway_push" {
  security_group_id            = aws_security_group.this["gateway"].id
  description                  = "pushes from delivery workers (gRPC)"
  referenced_security_group_id = aws_security_group.this["delivery_worker"].id
  ip_protocol                  = "tcp"
  from_port                    = var.gateway_push_port
  to_port                      = var.gateway_push_port
}

resource "aws_vpc_security_group_egress_rule" "worker_to_gateway" {
  security_group_id            = aws_security_group.this["delivery_worker"].id
  description                  = "pushes to gateways (gRPC)"
  referenced_security_group_id = aws_security_group.this["gateway"].id
  ip_protocol                  = "tcp"
  from_port                    = var.gateway_push_port
  to_port                      = var.gateway_push_port
}

# --- gateway -> chat service, chat service -> chat service ---------------------------------------------------
resource "aws_vpc_security_group_ingress_rule" "chat_from_gateway" {
  security_group_id            = aws_security_group.this["chat_service"].id
  description                  = "chat.v1.ChatService calls from gateways (gRPC)"
  referenced_security_group_id = aws_security_group.this["gateway"].id
  ip_protocol                  = "tcp"
  from_port                    = var.chat_service_grpc_port
  to_port                      = var.chat_service_grpc_port
}

resource "aws_vpc_security_group_egress_rule" "gateway_to_chat" {
  security_group_id            = aws_security_group.this["gateway"].id
  description                  = "calls to the chat service (gRPC)"
  referenced_security_group_id = aws_security_group.this["chat_service"].id
  ip_protocol                  = "tcp"
  from_port                    = var.chat_service_grpc_port
  to_port                      = var.chat_service_grpc_port
}

resource "aws_vpc_security_group_ingress_rule" "chat_from_chat" {
  security_group_id            = aws_security_group.this["chat_service"].id
  description                  = "writes forwarded to a partition's owner"
  referenced_security_group_id = aws_security_group.this["chat_service"].id
  ip_protocol                  = "tcp"
  from_port                    = var.chat_service_grpc_port
  to_port                      = var.chat_service_grpc_port
}

resource "aws_vpc_security_group_egress_rule" "chat_to_chat" {
  security_group_id            = aws_security_group.this["chat_service"].id
  description                  = "writes forwarded to a partition's owner"
  referenced_security_group_id = aws_security_group.this["chat_service"].id
  ip_protocol                  = "tcp"
  from_port                    = var.chat_service_grpc_port
  to_port                      = var.chat_service_grpc_port
}

# --- the log, the store, presence -------------------------------------------------------------------------------
resource "aws_vpc_security_group_ingress_rule" "kafka" {
  for_each = local.kafka_ingress

  security_group_id            = aws_security_group.this["kafka"].id
  description                  = "Kafka clients: ${replace(each.value, "_", "-")}"
  referenced_security_group_id = aws_security_group.this[each.value].id
  ip_protocol                  = "tcp"
  from_port                    = var.kafka_port
  to_port                      = var.kafka_port
}

resource "aws_vpc_security_group_egress_rule" "to_kafka" {
  for_each = local.kafka_ingress

  security_group_id            = aws_security_group.this[each.value].id
  description                  = "to the Kafka brokers"
  referenced_security_group_id = aws_security_group.this["kafka"].id
  ip_protocol                  = "tcp"
  from_port                    = var.kafka_port
  to_port                      = var.kafka_port
}

resource "aws_vpc_security_group_ingress_rule" "scylla" {
  for_each = local.scylla_ingress

  security_group_id            = aws_security_group.this["scylla"].id
  description                  = "CQL clients: ${replace(each.value.from, "_", "-")}"
  referenced_security_group_id = aws_security_group.this[each.value.from].id
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
}

resource "aws_vpc_security_group_egress_rule" "to_scylla" {
  for_each = local.scylla_ingress

  security_group_id            = aws_security_group.this[each.value.from].id
  description                  = "to ScyllaDB (CQL)"
  referenced_security_group_id = aws_security_group.this["scylla"].id
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
}

resource "aws_vpc_security_group_ingress_rule" "scylla_internode" {
  security_group_id            = aws_security_group.this["scylla"].id
  description                  = "ScyllaDB inter-node traffic"
  referenced_security_group_id = aws_security_group.this["scylla"].id
  ip_protocol                  = "tcp"
  from_port                    = 7000
  to_port                      = 7000
}

resource "aws_vpc_security_group_egress_rule" "scylla_internode" {
  security_group_id            = aws_security_group.this["scylla"].id
  description                  = "ScyllaDB inter-node traffic"
  referenced_security_group_id = aws_security_group.this["scylla"].id
  ip_protocol                  = "tcp"
  from_port                    = 7000
  to_port                      = 7000
}

resource "aws_vpc_security_group_ingress_rule" "redis" {
  for_each = local.redis_ingress

  security_group_id            = aws_security_group.this["redis"].id
  description                  = "presence clients: ${replace(each.value, "_", "-")}"
  referenced_security_group_id = aws_security_group.this[each.value].id
  ip_protocol                  = "tcp"
  from_port                    = var.redis_port
  to_port                      = var.redis_port
}

resource "aws_vpc_security_group_egress_rule" "to_redis" {
  for_each = local.redis_ingress

  security_group_id            = aws_security_group.this[each.value].id
  description                  = "to Redis (presence)"
  referenced_security_group_id = aws_security_group.this["redis"].id
  ip_protocol                  = "tcp"
  from_port                    = var.redis_port
  to_port                      = var.redis_port
}

# --- metrics and AWS APIs ---------------------------------------------------------------------------------------
resource "aws_vpc_security_group_ingress_rule" "metrics" {
  for_each = local.metrics_ingress

  security_group_id            = aws_security_group.this[each.value.tier].id
  description                  = "Prometheus scrapes of GET /metrics"
  referenced_security_group_id = each.value.scraper
  ip_protocol                  = "tcp"
  from_port                    = local.metrics_ports[each.value.tier]
  to_port                      = local.metrics_ports[each.value.tier]
}

resource "aws_vpc_security_group_egress_rule" "aws_apis" {
  for_each = toset(local.aws_api_egress)

  security_group_id = aws_security_group.this[each.value].id
  description       = "AWS APIs over HTTPS (ECR, Secrets Manager, CloudWatch Logs, SSM)"
  cidr_ipv4         = var.aws_api_cidr_block
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}
