variable "name" {
  description = "Prefix of the task families (NAME-migrate, NAME-create-topics)."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,40}$", var.name))
    error_message = "Letters, digits and hyphens, starting with a letter."
  }
}

variable "cluster_arn" {
  description = "ARN of the ECS cluster (module ecs-cluster)."
  type        = string
}

variable "image" {
  description = "The chatctl image (infra/images/build.sh, tag chatctl), pushed to a registry."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets the one-off tasks run in."
  type        = list(string)
}

variable "security_group_id" {
  description = "Security group of the one-off tasks (module security-groups: chatctl)."
  type        = string
}

variable "cassandra_contact_points" {
  description = "CHAT_CASSANDRA_NODES: ScyllaDB contact points (module scylla, output contact_points)."
  type        = list(string)

  validation {
    condition     = length(var.cassandra_contact_points) > 0
    error_message = "At least one contact point."
  }
}

variable "keyspace" {
  description = "CHAT_CASSANDRA_KEYSPACE: the services' keyspace."
  type        = string
  default     = "chat"
}

variable "keyspace_replication" {
  description = "CHAT_CASSANDRA_REPLICATION: replication map of the keyspace (module scylla, output keyspace_replication)."
  type        = string

  validation {
    condition     = can(regex("NetworkTopologyStrategy", var.keyspace_replication))
    error_message = "Production keyspaces use NetworkTopologyStrategy."
  }
}

variable "kafka_bootstrap_brokers" {
  description = "CHAT_KAFKA_BROKERS: bootstrap brokers (module kafka: output bootstrap_brokers_tls with kafka_tls, bootstrap_brokers without)."
  type        = string
}

variable "kafka_tls" {
  description = "KAFKA_TLS: connect to the brokers with TLS, checking their certificates against the image's system roots (MSK's TLS listener, port 9094, output bootstrap_brokers_tls of module kafka). false only for a plaintext listener."
  type        = bool
  default     = true
}

variable "events_topic" {
  description = "CHAT_EVENTS_TOPIC: the event log topic (its dead-letter topic is TOPIC.dlq)."
  type        = string
  default     = "chat.events.v1"
}

variable "events_partitions" {
  description = "CHAT_EVENTS_PARTITIONS: partitions of the events topic (module kafka, output events_partitions)."
  type        = number

  validation {
    condition     = var.events_partitions >= 1
    error_message = "At least 1."
  }
}

variable "replication_factor" {
  description = "CHAT_EVENTS_REPLICATION: replication factor of both topics (3 gives min.insync.replicas 2)."
  type        = number
  default     = 3

  validation {
    condition     = var.replication_factor >= 3
    error_message = "At least 3."
  }
}

variable "rust_log" {
  description = "RUST_LOG: log levels."
  type        = string
  default     = "info"
}

variable "kms_key_arn" {
  description = "KMS key of the logs (module ecs-cluster)."
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
