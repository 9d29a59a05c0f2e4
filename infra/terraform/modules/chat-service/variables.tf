variable "name" {
  description = "Name of the service and task family."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,62}$", var.name))
    error_message = "Letters, digits and hyphens, starting with a letter."
  }
}

variable "cluster_arn" {
  description = "ARN of the ECS cluster (module ecs-cluster)."
  type        = string
}

variable "image" {
  description = "The chat-service image (infra/images/build.sh, tag chat-service), pushed to a registry."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the tasks, one per availability zone."
  type        = list(string)
}

variable "security_group_id" {
  description = "Security group of the tasks (module security-groups: chat_service)."
  type        = string
}

variable "namespace_id" {
  description = "Private DNS namespace the tasks register in (module ecs-cluster)."
  type        = string
}

variable "namespace_name" {
  description = "Name of that namespace, e.g. chat.internal."
  type        = string
}

variable "discovery_name" {
  description = "The service's name in the namespace: gateways dial DISCOVERY_NAME.NAMESPACE."
  type        = string
  default     = "chat-service"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", var.discovery_name))
    error_message = "A DNS label."
  }
}

variable "grpc_port" {
  description = "Port of CHAT_GRPC_ADDR."
  type        = number
  default     = 50051

  validation {
    condition     = var.grpc_port >= 1024 && var.grpc_port <= 65535
    error_message = "An unprivileged port: the image runs as a non-root user."
  }
}

variable "metrics_port" {
  description = "Port of CHAT_METRICS_ADDR (GET /metrics, Prometheus text: the partition owners' counters)."
  type        = number
  default     = 9100

  validation {
    condition     = var.metrics_port >= 1024 && var.metrics_port <= 65535
    error_message = "An unprivileged port: the image runs as a non-root user."
  }
}

variable "kafka_bootstrap_brokers" {
  description = "CHAT_KAFKA_BROKERS: bootstrap brokers (module kafka: output bootstrap_brokers_tls with kafka_tls, bootstrap_brokers without)."
  type        = string

  validation {
    condition     = length(trimspace(var.kafka_bootstrap_brokers)) > 0
    error_message = "The bootstrap brokers are required (empty means the MSK cluster serves TLS only: see the kafka module)."
  }
}

variable "kafka_tls" {
  description = "KAFKA_TLS: connect to the brokers with TLS, checking their certificates against the image's system roots (MSK's TLS listener, port 9094, output bootstrap_brokers_tls of module kafka). false only for a plaintext listener."
  type        = bool
  default     = true
}

variable "events_topic" {
  description = "CHAT_EVENTS_TOPIC: the event log topic."
  type        = string
  default     = "chat.events.v1"

  validation {
    condition     = length(var.events_topic) >= 1 && length(var.events_topic) <= 249
    error_message = "1 to 249 characters."
  }
}

variable "cassandra_contact_points" {
  description = "CHAT_CASSANDRA_NODES: ScyllaDB contact points host:port (module scylla, output contact_points)."
  type        = list(string)

  validation {
    condition     = length(var.cassandra_contact_points) > 0
    error_message = "At least one contact point."
  }
}

variable "keyspace" {
  description = "CHAT_CASSANDRA_KEYSPACE (created by chatctl migrate)."
  type        = string
  default     = "chat"

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9_]{0,47}$", var.keyspace))
    error_message = "A CQL keyspace name."
  }
}

variable "send_timeout_ms" {
  description = "CHAT_SEND_TIMEOUT_MS: longest a send may take before it fails as retryable."
  type        = number
  default     = 10000

  validation {
    condition     = var.send_timeout_ms >= 100 && var.send_timeout_ms <= 120000
    error_message = "100 to 120000 ms."
  }
}

variable "store_timeout_ms" {
  description = "CHAT_STORE_TIMEOUT_MS: timeout of one store request."
  type        = number
  default     = 5000

  validation {
    condition     = var.store_timeout_ms >= 10
    error_message = "At least 10 ms."
  }
}

variable "message_ttl_secs" {
  description = "CHAT_MESSAGE_TTL_SECS: history retention, 0 forever; the workers must have the same."
  type        = number
  default     = 0

  validation {
    condition     = var.message_ttl_secs >= 0
    error_message = "0 or positive."
  }
}

variable "members_cache_ms" {
  description = "CHAT_MEMBERS_CACHE_MS: how long a partition's owner trusts that a sender is a member (removals forget it at once)."
  type        = number
  default     = 60000

  validation {
    condition     = var.members_cache_ms >= 0 && var.members_cache_ms <= 60000
    error_message = "0 to 60000 ms."
  }
}

variable "owner_group_id" {
  description = "CHAT_OWNER_GROUP_ID: consumer group deciding which replica owns which partition."
  type        = string
  default     = "chat-owners"
}

variable "worker_group_id" {
  description = "CHAT_PROJECTOR_GROUP_ID: the delivery workers' consumer group (their WORKER_GROUP_ID)."
  type        = string
  default     = "delivery-worker"
}

variable "transaction_timeout_ms" {
  description = "CHAT_TRANSACTION_TIMEOUT_MS: the broker aborts a transaction open longer."
  type        = number
  default     = 10000
}

variable "owner_session_timeout_ms" {
  description = "CHAT_OWNER_SESSION_TIMEOUT_MS: how long a silent replica keeps its partitions."
  type        = number
  default     = 6000
}

variable "grpc_tls" {
  description = "Secrets of the chat service's internal mutual TLS (module secrets, output grpc_tls[\"chat-service\"]); null: plaintext."
  type = object({
    cert_arn = string
    key_arn  = string
    ca_arn   = string
  })
  default = null
}

variable "grpc_tls_server_name" {
  description = "GRPC_TLS_SERVER_NAME: the name every internal certificate carries."
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
  default     = 1024
}

variable "memory" {
  description = "Task memory in MiB."
  type        = number
  default     = 2048
}

variable "desired_count" {
  description = "Tasks at creation."
  type        = number
  default     = 3
}

variable "min_count" {
  description = "Fewest tasks."
  type        = number
  default     = 3
}

variable "max_count" {
  description = "Most tasks."
  type        = number
  default     = 20
}

variable "cpu_target" {
  description = "Average CPU utilisation autoscaling keeps (percent)."
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
