variable "name" {
  description = "Name of the service, its load balancer and task family."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,31}$", var.name))
    error_message = "Letters, digits and hyphens, starting with a letter, at most 32 (a load balancer's limit)."
  }
}

variable "cluster_arn" {
  description = "ARN of the ECS cluster (module ecs-cluster)."
  type        = string
}

variable "image" {
  description = "The gateway image (infra/images/build.sh, tag gateway), pushed to a registry."
  type        = string
}

variable "vpc_id" {
  description = "The existing VPC."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "The VPC id looks like vpc-0123abcd."
  }
}

variable "subnet_ids" {
  description = "Private subnets of the tasks, one per availability zone."
  type        = list(string)
}

variable "lb_subnet_ids" {
  description = "Subnets of the load balancer: public ones for an internet-facing balancer."
  type        = list(string)

  validation {
    condition     = length(var.lb_subnet_ids) >= 2
    error_message = "At least two subnets."
  }
}

variable "internal" {
  description = "An internal load balancer instead of an internet-facing one."
  type        = bool
  default     = false
}

variable "security_group_id" {
  description = "Security group of the tasks (module security-groups: gateway)."
  type        = string
}

variable "nlb_security_group_id" {
  description = "Security group of the load balancer (module security-groups: nlb)."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate of the wss:// host name, served by the TLS listener."
  type        = string

  validation {
    condition     = can(regex("^arn:[^:]+:acm:", var.certificate_arn))
    error_message = "An ACM certificate ARN."
  }
}

variable "ssl_policy" {
  description = "TLS policy of the listener."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"

  validation {
    condition     = startswith(var.ssl_policy, "ELBSecurityPolicy-")
    error_message = "An ELB security policy name."
  }
}

variable "deregistration_delay" {
  description = "Seconds a stopping task stays registered (no new connections) before ECS sends it SIGTERM."
  type        = number
  default     = 15

  validation {
    condition     = var.deregistration_delay >= 0 && var.deregistration_delay <= 3600
    error_message = "0 to 3600 seconds."
  }
}

variable "access_logs_bucket" {
  description = "S3 bucket for the load balancer's access logs (TLS connections); null: none."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion."
  type        = bool
  default     = true
}

variable "ws_port" {
  description = "Port of GATEWAY_WS_ADDR (WebSocket, /healthz, /readyz)."
  type        = number
  default     = 8080

  validation {
    condition     = var.ws_port >= 1024 && var.ws_port <= 65535
    error_message = "An unprivileged port: the image runs as a non-root user."
  }
}

variable "metrics_port" {
  description = "Port of GATEWAY_METRICS_ADDR (GET /metrics, Prometheus text: sessions, frames, sends, pushes); not behind the load balancer."
  type        = number
  default     = 9100

  validation {
    condition     = var.metrics_port >= 1024 && var.metrics_port <= 65535
    error_message = "An unprivileged port: the image runs as a non-root user."
  }
}

variable "push_port" {
  description = "Port of GATEWAY_GRPC_ADDR (pushes from delivery workers); the advertised address is the task's own (set by the image's entry point)."
  type        = number
  default     = 50061

  validation {
    condition     = var.push_port >= 1024 && var.push_port <= 65535
    error_message = "An unprivileged port: the image runs as a non-root user."
  }
}

variable "chat_service_url" {
  description = "URL of the chat service (module chat-service, output url): https:// with mutual TLS, http:// without."
  type        = string

  validation {
    condition     = can(regex("^https?://[^,]+$", var.chat_service_url))
    error_message = "One http:// or https:// URL."
  }
}

variable "chat_service_channels" {
  description = "Connections each gateway opens to the chat service name (GATEWAY_CHAT_SERVICE_URLS repeats it): each resolves the name itself, so calls spread over several chat-service tasks."
  type        = number
  default     = 4

  validation {
    condition     = var.chat_service_channels >= 1 && var.chat_service_channels <= 64
    error_message = "1 to 64."
  }
}

variable "redis_url_secret_arn" {
  description = "Secret holding the Redis URL with its AUTH token (module redis, output url_secret_arn)."
  type        = string
}

variable "redis_prefix" {
  description = "GATEWAY_REDIS_PREFIX: prefix of every Redis key; the same as the workers'."
  type        = string
  default     = "chat:"

  validation {
    condition     = length(var.redis_prefix) > 0
    error_message = "A non-empty prefix."
  }
}

variable "jwt_secret_arn" {
  description = "Secret holding the HMAC secret of client tokens (module secrets, jwt_mode hmac); or null."
  type        = string
  default     = null
}

variable "jwt_public_key_arn" {
  description = "Secret holding the PEM public key of client tokens (module secrets, jwt_mode public_key); or null."
  type        = string
  default     = null
}

variable "jwt_algorithms" {
  description = "GATEWAY_JWT_ALGORITHMS; empty: the gateway's default (HS256 with a secret; RS256, ES256, EdDSA with a key, where every one must match the key's kind: set it to your key's)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.jwt_algorithms : contains(["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"], a)])
    error_message = "Algorithms among HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA."
  }
}

variable "jwt_issuer" {
  description = "GATEWAY_JWT_ISSUER: required `iss` claim; null: not checked."
  type        = string
  default     = null
}

variable "jwt_audience" {
  description = "GATEWAY_JWT_AUDIENCE: required `aud` claim; null: not checked."
  type        = string
  default     = null
}

variable "jwt_leeway_secs" {
  description = "GATEWAY_JWT_LEEWAY_SECS: clock skew allowed on exp and nbf."
  type        = number
  default     = 30

  validation {
    condition     = var.jwt_leeway_secs >= 0 && var.jwt_leeway_secs <= 300
    error_message = "0 to 300 seconds."
  }
}

variable "allowed_origins" {
  description = "GATEWAY_ALLOWED_ORIGINS: allowed Origin values of browser clients; empty: not checked."
  type        = list(string)
  default     = []
}

variable "ping_interval_ms" {
  description = "GATEWAY_PING_INTERVAL_MS: must stay well under the NLB TLS listener's fixed 350 s idle timeout."
  type        = number
  default     = 20000

  validation {
    condition     = var.ping_interval_ms >= 1000 && var.ping_interval_ms <= 300000
    error_message = "1000 to 300000 ms: under the load balancer's 350 s idle timeout, with room."
  }
}

variable "idle_timeout_ms" {
  description = "GATEWAY_IDLE_TIMEOUT_MS: a connection silent this long (no pong either) is closed with 4002."
  type        = number
  default     = 60000

  validation {
    condition     = var.idle_timeout_ms <= 3600000
    error_message = "At most 3600000 ms."
  }
}

variable "rpc_timeout_ms" {
  description = "GATEWAY_RPC_TIMEOUT_MS: deadline of calls to the chat service."
  type        = number
  default     = 10000

  validation {
    condition     = var.rpc_timeout_ms >= 100
    error_message = "At least 100 ms."
  }
}

variable "nofile_limit" {
  description = "Open-file limit of a task: bounds its connections (GATEWAY_MAX_CONNECTIONS defaults to it less 512) and is its per-address cap."
  type        = number
  default     = 262144

  validation {
    condition     = var.nofile_limit >= 4096 && var.nofile_limit <= 1048576
    error_message = "4096 to 1048576 (Fargate's maximum)."
  }
}

variable "max_connections" {
  description = "GATEWAY_MAX_CONNECTIONS; null: the open-file limit less 512."
  type        = number
  default     = null

  validation {
    condition     = var.max_connections == null ? true : var.max_connections >= 1
    error_message = "At least 1."
  }
}

variable "grpc_tls" {
  description = "Secrets of the gateway's internal mutual TLS (module secrets, output grpc_tls[\"gateway\"]); null: plaintext."
  type = object({
    cert_arn = string
    key_arn  = string
    ca_arn   = string
  })
  default = null
}

variable "grpc_tls_server_name" {
  description = "GRPC_TLS_SERVER_NAME: the name every internal certificate carries (gateways are dialled by address)."
  type        = string
  default     = "internal.chat"
}

variable "rust_log" {
  description = "RUST_LOG: log levels."
  type        = string
  default     = "info"
}

variable "cpu" {
  description = "Task CPU units."
  type        = number
  default     = 2048
}

variable "memory" {
  description = "Task memory in MiB."
  type        = number
  default     = 8192
}

variable "desired_count" {
  description = "Tasks at creation."
  type        = number
  default     = 3
}

variable "min_count" {
  description = "Fewest tasks (at least one per zone is wise)."
  type        = number
  default     = 3
}

variable "max_count" {
  description = "Most tasks."
  type        = number
  default     = 30
}

variable "cpu_target" {
  description = "Average CPU utilisation autoscaling keeps (percent)."
  type        = number
  default     = 60
}

variable "memory_target" {
  description = "Average memory utilisation autoscaling keeps (percent): the connections' measure."
  type        = number
  default     = 60
}

variable "kms_key_arn" {
  description = "KMS key of the logs and secrets (module ecs-cluster)."
  type        = string
}

variable "log_retention_days" {
  description = "How long CloudWatch keeps the logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
