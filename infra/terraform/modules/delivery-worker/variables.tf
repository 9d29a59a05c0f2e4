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
  description = "The delivery-worker image (infra/images/build.sh, tag delivery-worker), pushed to a registry."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the tasks, one per availability zone."
  type        = list(string)
}

variable "security_group_id" {
  description = "Security group of the tasks (module security-groups: delivery_worker)."
  type        = string
}

variable "kafka_bootstrap_brokers" {
  description = "WORKER_KAFKA_BROKERS: bootstrap brokers (module kafka: output bootstrap_brokers_tls with kafka_tls, bootstrap_brokers without)."
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
  description = "WORKER_EVENTS_TOPIC: the event log topic, as the chat service's."
  type        = string
  default     = "chat.events.v1"
}

variable "dead_letter_topic" {
  description = "WORKER_DEAD_LETTER_TOPIC; null: EVENTS_TOPIC.dlq (what chatctl create-topics creates)."
  type        = string
  default     = null
}

variable "events_partitions" {
  description = "Partitions of the events topic (module kafka, output events_partitions): the most workers that get work."
  type        = number

  validation {
    condition     = var.events_partitions >= 1
    error_message = "At least 1."
  }
}

variable "group_id" {
  description = "WORKER_GROUP_ID: the consumer group every worker shares (the chat service's worker_group_id)."
  type        = string
  default     = "delivery-worker"

  validation {
    condition     = length(var.group_id) > 0
    error_message = "Not empty."
  }
}

variable "cassandra_contact_points" {
  description = "WORKER_CASSANDRA_NODES: ScyllaDB contact points (module scylla, output contact_points)."
  type        = list(string)

  validation {
    condition     = length(var.cassandra_contact_points) > 0
    error_message = "At least one contact point."
  }
}

variable "keyspace" {
  description = "WORKER_CASSANDRA_KEYSPACE: as the chat service's."
  type        = string
  default     = "chat"
}

variable "redis_url_secret_arn" {
  description = "Secret holding the Redis URL with its AUTH token (module redis, output url_secret_arn)."
  type        = string
}

variable "redis_prefix" {
  description = "WORKER_REDIS_PREFIX: as the gateways'."
  type        = string
  default     = "chat:"
}

variable "push_timeout_ms" {
  description = "WORKER_PUSH_TIMEOUT_MS: deadline of one push; past it the device gets the inbox."
  type        = number
  default     = 2000

  validation {
    condition     = var.push_timeout_ms >= 50 && var.push_timeout_ms <= 60000
    error_message = "50 to 60000 ms."
  }
}

variable "message_ttl_secs" {
  description = "WORKER_MESSAGE_TTL_SECS: the chat service's history retention."
  type        = number
  default     = 0

  validation {
    condition     = var.message_ttl_secs >= 0
    error_message = "0 or positive."
  }
}

variable "members_cache_ms" {
  description = "WORKER_MEMBERS_CACHE_MS: longest time a member list is reused (the log's membership events forget it sooner)."
  type        = number
  default     = 60000

  validation {
    condition     = var.members_cache_ms >= 0
    error_message = "0 or positive."
  }
}

variable "devices_cache_ms" {
  description = "WORKER_DEVICES_CACHE_MS: longest time a user's device list is reused (a device registered since changes its stamp in presence, which forgets it sooner)."
  type        = number
  default     = 60000

  validation {
    condition     = var.devices_cache_ms >= 0
    error_message = "0 or positive."
  }
}

variable "cursor_save_ms" {
  description = "WORKER_CURSOR_SAVE_MS: how often delivery cursors are written at most."
  type        = number
  default     = 1000

  validation {
    condition     = var.cursor_save_ms >= 0 && var.cursor_save_ms <= 60000
    error_message = "0 to 60000 ms."
  }
}

variable "group_wedged_after_ms" {
  description = "WORKER_GROUP_WEDGED_AFTER_MS: how long a worker's Kafka consumer may be out of its group before it is replaced by a new one."
  type        = number
  default     = 60000

  validation {
    condition     = var.group_wedged_after_ms >= 5000 && var.group_wedged_after_ms <= 3600000
    error_message = "5000 to 3600000 ms."
  }
}

variable "metrics_port" {
  description = "Port of WORKER_METRICS_ADDR (GET /metrics, Prometheus text)."
  type        = number
  default     = 9100

  validation {
    condition     = var.metrics_port >= 1024 && var.metrics_port <= 65535
    error_message = "An unprivileged port: the image runs as a non-root user."
  }
}

variable "grpc_tls" {
  description = "Secrets of the worker's internal mutual TLS (module secrets, output grpc_tls[\"delivery-worker\"]); null: plaintext."
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
  default     = 1024
}

variable "memory" {
  description = "Task memory in MiB."
  type        = number
  default     = 2048
}

variable "desired_count" {
  description = "Tasks at creation (at most events_partitions)."
  type        = number
  default     = 3
}

variable "min_count" {
  description = "Fewest tasks."
  type        = number
  default     = 2
}

variable "max_count" {
  description = "Most tasks (at most events_partitions)."
  type        = number
  default     = 12
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
