variable "name" {
  description = "Name of the MSK cluster and its configuration."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,63}$", var.name))
    error_message = "The name must start with a letter and hold at most 64 letters, digits and hyphens."
  }
}

variable "kafka_version" {
  description = "Apache Kafka version of the brokers (one MSK offers)."
  type        = string
  default     = "3.9.x"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.([0-9]+|x)(\\.tiered)?$", var.kafka_version))
    error_message = "A Kafka version as MSK names it, e.g. 3.9.x or 3.6.0."
  }
}

variable "subnet_ids" {
  description = "Private subnets of the brokers, one per availability zone (3)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) == 3
    error_message = "Three subnets, in three availability zones."
  }
}

variable "security_group_id" {
  description = "Security group of the brokers (module security-groups: kafka)."
  type        = string
}

variable "broker_count" {
  description = "Number of brokers: a multiple of the number of subnets."
  type        = number
  default     = 3

  validation {
    condition     = var.broker_count >= 3
    error_message = "At least 3 brokers, for replication factor 3."
  }
}

variable "broker_instance_type" {
  description = "MSK broker instance type."
  type        = string
  default     = "kafka.m7g.large"

  validation {
    condition     = startswith(var.broker_instance_type, "kafka.")
    error_message = "An MSK instance type, e.g. kafka.m7g.large."
  }
}

variable "broker_volume_size" {
  description = "EBS storage per broker, in GiB. The log is kept forever (it is the source of truth): size for it."
  type        = number
  default     = 1000

  validation {
    condition     = var.broker_volume_size >= 1 && var.broker_volume_size <= 16384
    error_message = "1 to 16384 GiB."
  }
}

variable "replication_factor" {
  description = "Default replication factor of topics (and of Kafka's internal topics)."
  type        = number
  default     = 3

  validation {
    condition     = var.replication_factor >= 3
    error_message = "At least 3: an acknowledged send must survive the loss of a zone."
  }
}

variable "min_insync_replicas" {
  description = "Replicas that must have a record before acks=all succeeds."
  type        = number
  default     = 2

  validation {
    condition     = var.min_insync_replicas >= 2
    error_message = "At least 2."
  }
}

variable "events_partitions" {
  description = "Partitions of the events topic (num.partitions of the brokers, and what chatctl create-topics is given). See docs/operations.md before changing it."
  type        = number
  default     = 24

  validation {
    condition     = var.events_partitions >= 1 && var.events_partitions <= 10000
    error_message = "1 to 10000 partitions."
  }
}

variable "client_broker_encryption" {
  description = "Encryption between clients and brokers: TLS (port 9094 only, what the services use with KAFKA_TLS), TLS_PLAINTEXT (9094 and 9092) or PLAINTEXT."
  type        = string
  default     = "TLS"

  validation {
    condition     = contains(["TLS", "TLS_PLAINTEXT", "PLAINTEXT"], var.client_broker_encryption)
    error_message = "TLS, TLS_PLAINTEXT or PLAINTEXT."
  }
}

variable "enhanced_monitoring" {
  description = "MSK CloudWatch metrics level: DEFAULT, PER_BROKER, PER_TOPIC_PER_BROKER or PER_TOPIC_PER_PARTITION."
  type        = string
  default     = "PER_TOPIC_PER_BROKER"

  validation {
    condition     = contains(["DEFAULT", "PER_BROKER", "PER_TOPIC_PER_BROKER", "PER_TOPIC_PER_PARTITION"], var.enhanced_monitoring)
    error_message = "DEFAULT, PER_BROKER, PER_TOPIC_PER_BROKER or PER_TOPIC_PER_PARTITION."
  }
}

variable "extra_server_properties" {
  description = "More broker settings (server.properties), over this module's."
  type        = map(string)
  default     = {}
}

variable "kms_key_arn" {
  description = "KMS key for data at rest and the broker log group."
  type        = string

  validation {
    condition     = can(regex("^arn:[^:]+:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "log_retention_days" {
  description = "How long CloudWatch keeps the broker logs."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "A retention CloudWatch Logs accepts."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
