variable "name" {
  description = "Replication group id, and prefix of the subnet group, log group and secret."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,39}$", var.name))
    error_message = "Lower-case letters, digits and hyphens, starting with a letter, at most 40."
  }
}

variable "engine" {
  description = "redis (Redis OSS) or valkey."
  type        = string
  default     = "redis"

  validation {
    condition     = contains(["redis", "valkey"], var.engine)
    error_message = "redis or valkey."
  }
}

variable "engine_version" {
  description = "Engine version (7.0.5 or later for transit_encryption_mode)."
  type        = string
  default     = "7.1"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+", var.engine_version))
    error_message = "A version such as 7.1."
  }
}

variable "node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.r7g.large"

  validation {
    condition     = startswith(var.node_type, "cache.")
    error_message = "An ElastiCache node type, e.g. cache.r7g.large."
  }
}

variable "replicas" {
  description = "Replicas of the primary (in other zones): 2 puts a node in each of 3 zones."
  type        = number
  default     = 2

  validation {
    condition     = var.replicas >= 1 && var.replicas <= 5
    error_message = "1 to 5 replicas (Multi-AZ needs at least 1)."
  }
}

variable "port" {
  description = "Redis port."
  type        = number
  default     = 6379

  validation {
    condition     = var.port >= 1024 && var.port <= 65535
    error_message = "A port from 1024 to 65535."
  }
}

variable "transit_encryption_mode" {
  description = "required: TLS only (URL rediss://); preferred: TLS and plaintext (URL redis://). The services speak both; required is the default."
  type        = string
  default     = "required"

  validation {
    condition     = contains(["required", "preferred"], var.transit_encryption_mode)
    error_message = "required or preferred."
  }
}

variable "auth_token_rotation" {
  description = "Change this value to generate a new AUTH token (rotated with both tokens valid meanwhile; docs/operations.md)."
  type        = string
  default     = "1"
}

variable "subnet_ids" {
  description = "Private subnets of the nodes, one per availability zone."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "At least two subnets, for Multi-AZ."
  }
}

variable "security_group_id" {
  description = "Security group of the nodes (module security-groups: redis)."
  type        = string
}

variable "maintenance_window" {
  description = "Weekly maintenance window (UTC), ddd:hh24:mi-ddd:hh24:mi."
  type        = string
  default     = "sun:05:00-sun:06:00"

  validation {
    condition     = can(regex("^(mon|tue|wed|thu|fri|sat|sun):[0-2][0-9]:[0-5][0-9]-(mon|tue|wed|thu|fri|sat|sun):[0-2][0-9]:[0-5][0-9]$", var.maintenance_window))
    error_message = "Format ddd:hh24:mi-ddd:hh24:mi."
  }
}

variable "kms_key_arn" {
  description = "KMS key for data at rest, the log group and the URL secret."
  type        = string

  validation {
    condition     = can(regex("^arn:[^:]+:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "recovery_window_in_days" {
  description = "Days a deleted URL secret can still be restored (0 deletes at once)."
  type        = number
  default     = 30

  validation {
    condition     = var.recovery_window_in_days == 0 || (var.recovery_window_in_days >= 7 && var.recovery_window_in_days <= 30)
    error_message = "0, or 7 to 30 days."
  }
}

variable "log_retention_days" {
  description = "How long CloudWatch keeps the slow log."
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
