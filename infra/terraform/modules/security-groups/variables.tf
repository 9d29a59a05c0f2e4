variable "name" {
  description = "Prefix of the security groups' names."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,39}$", var.name))
    error_message = "The name must start with a letter and hold at most 40 letters, digits and hyphens."
  }
}

variable "vpc_id" {
  description = "The existing VPC."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "The VPC id looks like vpc-0123abcd."
  }
}

variable "client_cidr_blocks" {
  description = "Where clients connect from (to the load balancer's port 443)."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for c in var.client_cidr_blocks : can(cidrhost(c, 0))]) && length(var.client_cidr_blocks) > 0
    error_message = "At least one CIDR block, each valid."
  }
}

variable "aws_api_cidr_block" {
  description = "Where the tasks reach AWS APIs on 443: 0.0.0.0/0 through a NAT gateway, or the VPC's CIDR with VPC endpoints."
  type        = string
  default     = "0.0.0.0/0"

  validation {
    condition     = can(cidrhost(var.aws_api_cidr_block, 0))
    error_message = "A valid CIDR block."
  }
}

variable "gateway_ws_port" {
  description = "The gateways' WebSocket port (GATEWAY_WS_ADDR)."
  type        = number
  default     = 8080

  validation {
    condition     = var.gateway_ws_port >= 1024 && var.gateway_ws_port <= 65535
    error_message = "An unprivileged port: the images run as a non-root user."
  }
}

variable "gateway_push_port" {
  description = "The gateways' gRPC push port (GATEWAY_GRPC_ADDR)."
  type        = number
  default     = 50061

  validation {
    condition     = var.gateway_push_port >= 1024 && var.gateway_push_port <= 65535
    error_message = "An unprivileged port: the images run as a non-root user."
  }
}

variable "chat_service_grpc_port" {
  description = "The chat service's gRPC port (CHAT_GRPC_ADDR)."
  type        = number
  default     = 50051

  validation {
    condition     = var.chat_service_grpc_port >= 1024 && var.chat_service_grpc_port <= 65535
    error_message = "An unprivileged port: the images run as a non-root user."
  }
}

variable "gateway_metrics_port" {
  description = "The gateways' metrics port (GATEWAY_METRICS_ADDR)."
  type        = number
  default     = 9100

  validation {
    condition     = var.gateway_metrics_port >= 1024 && var.gateway_metrics_port <= 65535
    error_message = "An unprivileged port: the images run as a non-root user."
  }
}

variable "worker_metrics_port" {
  description = "The delivery workers' metrics port (WORKER_METRICS_ADDR)."
  type        = number
  default     = 9100

  validation {
    condition     = var.worker_metrics_port >= 1024 && var.worker_metrics_port <= 65535
    error_message = "An unprivileged port: the images run as a non-root user."
  }
}

variable "chat_service_metrics_port" {
  description = "The chat services' metrics port (CHAT_METRICS_ADDR)."
  type        = number
  default     = 9100

  validation {
    condition     = var.chat_service_metrics_port >= 1024 && var.chat_service_metrics_port <= 65535
    error_message = "An unprivileged port: the images run as a non-root user."
  }
}

variable "metrics_source_security_group_ids" {
  description = "Security groups of the Prometheus scrapers allowed to read the gateways', the chat services' and the workers' /metrics."
  type        = list(string)
  default     = []
}

variable "kafka_port" {
  description = "The brokers' client port: 9092 plaintext, 9094 TLS (what the services use, see the kafka module)."
  type        = number
  default     = 9094

  validation {
    condition     = contains([9092, 9094], var.kafka_port)
    error_message = "MSK serves clients on 9092 (plaintext) or 9094 (TLS)."
  }
}

variable "cql_ports" {
  description = "ScyllaDB's CQL ports: 9042, and 19042, the shard-aware port the scylla driver uses when offered."
  type        = list(number)
  default     = [9042, 19042]

  validation {
    condition     = length(var.cql_ports) > 0 && alltrue([for p in var.cql_ports : contains([9042, 19042, 9142, 19142], p)])
    error_message = "CQL ports are 9042 and 19042 (9142 and 19142 with TLS)."
  }
}

variable "redis_port" {
  description = "The Redis port."
  type        = number
  default     = 6379

  validation {
    condition     = var.redis_port >= 1024 && var.redis_port <= 65535
    error_message = "A port from 1024 to 65535."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
