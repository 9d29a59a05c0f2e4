# Gateways on ECS Fargate behind a Network Load Balancer: clients connect with wss:// to its TLS listener on
# 443, which ends TLS and forwards the WebSocket stream to GATEWAY_WS_ADDR (the L4 path of the design).
# Targets are checked with HTTP GET /readyz, which answers 503 as soon as a gateway starts shutting down.
#
# Idle connections: an NLB TLS listener closes a flow after 350 s without a byte, and that timeout cannot be
# changed (TCP listeners only). Every connection gets a WebSocket ping every GATEWAY_PING_INTERVAL_MS
# (ping_interval_ms, at most 300 s here), so no healthy connection is ever idle that long.
#
# All connections reach a gateway from the load balancer's addresses: GATEWAY_MAX_CONNECTIONS_PER_ADDRESS is
# raised to the task's open-file limit, which makes the per-address cap no tighter than the total one.

locals {
  environment_all = {
    GATEWAY_WS_ADDR                     = "0.0.0.0:${var.ws_port}"
    GATEWAY_GRPC_ADDR                   = "0.0.0.0:${var.push_port}"
    GATEWAY_METRICS_ADDR                = "0.0.0.0:${var.metrics_port}"
    GATEWAY_CHAT_SERVICE_URLS           = join(",", [for i in range(var.chat_service_channels) : var.chat_service_url])
    GATEWAY_REDIS_PREFIX                = var.redis_prefix
    GATEWAY_JWT_ALGORITHMS              = length(var.jwt_algorithms) > 0 ? join(",", var.jwt_algorithms) : null
    GATEWAY_JWT_ISSUER                  = var.jwt_issuer
    GATEWAY_JWT_AUDIENCE                = var.jwt_audience
    GATEWAY_JWT_LEEWAY_SECS             = tostring(var.jwt_leeway_secs)
    GATEWAY_ALLOWED_ORIGINS             = length(var.allowed_origins) > 0 ? join(",", var.allowed_origins) : null
    GATEWAY_PING_INTERVAL_MS            = tostring(var.ping_interval_ms)
    GATEWAY_IDLE_TIMEOUT_MS             = tostring(var.idle_timeout_ms)
    GATEWAY_MAX_CONNECTIONS_PER_ADDRESS = tostring(var.nofile_limit)
    GATEWAY_MAX_CONNECTIONS             = var.max_connections == null ? null : tostring(var.max_connections)
    GATEWAY_RPC_TIMEOUT_MS              = tostring(var.rpc_timeout_ms)
    GRPC_TLS_SERVER_NAME                = var.grpc_tls == null ? null : var.grpc_tls_server_name
    RUST_LOG                            = var.rust_log
  }
  environment = { for k, v in local.environment_all : k => v if v != null }

  secrets_all = {
    GATEWAY_REDIS_URL          = var.redis_url_secret_arn
    GATEWAY_JWT_SECRET         = var.jwt_secret_arn
    GATEWAY_JWT_PUBLIC_KEY_PEM = var.jwt_public_key_arn
    GRPC_TLS_CERT_PEM          = var.grpc_tls == null ? null : var.grpc_tls.cert_arn
    GRPC_TLS_KEY_PEM           = var.grpc_tls == null ? null : var.grpc_tls.key_arn
    GRPC_TLS_CA_PEM            = var.grpc_tls == null ? null : var.grpc_tls.ca_arn
  }
  secrets = { for k, v in local.secrets_all : k => v if v != null }
}

resource "aws_lb" "this" {
  name                             = var.name
  load_balancer_type               = "network"
  internal                         = var.internal
  subnets                          = var.lb_subnet_ids
  security_groups                  = [var.nlb_security_group_id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection

  dynamic "access_logs" {
    for_each = var.access_logs_bucket == null ? [] : [var.access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = var.name
      enabled = true
    }
  }

  tags = var.tags
}

resource "aws_lb_target_group" "this" {
  name_prefix          = "gw-"
  port                 = var.ws_port
  protocol             = "TCP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = var.deregistration_delay

  health_check {
    protocol            = "HTTP"
    path                = "/readyz"
    port                = "traffic-port"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = (var.jwt_secret_arn == null) != (var.jwt_public_key_arn == null)
      error_message = "Give exactly one of jwt_secret_arn (HMAC tokens) and jwt_public_key_arn (RS/PS/ES/EdDSA tokens)."
    }
    precondition {
      condition     = var.idle_timeout_ms > var.ping_interval_ms
      error_message = "idle_timeout_ms must be over ping_interval_ms (the gateway refuses to start otherwise)."
    }
    precondition {
      condition     = startswith(var.chat_service_url, var.grpc_tls == null ? "http://" : "https://")
      error_message = "chat_service_url takes https:// with grpc_tls (mutual TLS), http:// without."
    }
  }

  tags = var.tags
}

resource "aws_lb_listener" "wss" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "TLS"
  certificate_arn   = var.certificate_arn
  ssl_policy        = var.ssl_policy
  alpn_policy       = "HTTP1Only"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = var.tags
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
  nofile_limit       = var.nofile_limit
  # A gateway closes its connections with 1001 within 10 s of SIGTERM; the load balancer stops sending it new
  # ones during the deregistration delay, before ECS sends SIGTERM.
  stop_timeout = 30

  port_mappings = [
    { name = "ws", container_port = var.ws_port },
    { name = "push", container_port = var.push_port },
    { name = "metrics", container_port = var.metrics_port },
  ]
  load_balancer = {
    target_group_arn = aws_lb_target_group.this.arn
    container_port   = var.ws_port
  }

  desired_count = var.desired_count
  min_count     = var.min_count
  max_count     = var.max_count
  cpu_target    = var.cpu_target
  # Each resting connection costs a fixed amount of memory (about 12.6 KiB in `make bench`), so memory
  # utilisation follows the number of connections: scaling on it is scaling on connections.
  memory_target = var.memory_target

  tags = var.tags
}
