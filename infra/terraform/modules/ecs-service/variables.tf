variable "name" {
  description = "Name of the service, its task family and its log group (/ecs/NAME)."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,62}$", var.name))
    error_message = "The name must start with a letter and hold at most 63 letters, digits and hyphens."
  }
}

variable "create_service" {
  description = "Create an ECS service; false makes only the task definition, for one-off tasks (run-task)."
  type        = bool
  default     = true
}

variable "cluster_arn" {
  description = "ARN of the ECS cluster."
  type        = string

  validation {
    condition     = can(regex("^arn:[^:]+:ecs:[^:]+:[0-9]+:cluster/.+$", var.cluster_arn))
    error_message = "cluster_arn must be an ECS cluster ARN."
  }
}

variable "image" {
  description = "The container image (built by infra/images/build.sh, pushed with skopeo)."
  type        = string

  validation {
    condition     = length(var.image) > 0
    error_message = "The image is required."
  }
}

variable "command" {
  description = "Arguments after the image's entry point (the chatctl subcommand for one-off tasks); empty: none."
  type        = list(string)
  default     = []
}

variable "user" {
  description = "The user the container runs as: the images' non-root user."
  type        = string
  default     = "10001:10001"

  validation {
    condition     = can(regex("^[1-9][0-9]*:[0-9]+$", var.user))
    error_message = "The user is a numeric uid:gid other than root."
  }
}

variable "cpu" {
  description = "Task CPU units (Fargate sizes: 256, 512, 1024, 2048, 4096, 8192, 16384)."
  type        = number

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.cpu)
    error_message = "cpu must be a Fargate size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "memory" {
  description = "Task memory in MiB (within what Fargate allows for the chosen cpu)."
  type        = number

  validation {
    condition     = var.memory >= 512 && var.memory <= 122880
    error_message = "memory must be between 512 and 122880 MiB."
  }
}

variable "environment" {
  description = "Plain environment variables of the container. Never secrets: those go in `secrets`."
  type        = map(string)
  default     = {}
}

variable "secrets" {
  description = "Environment variables filled from Secrets Manager when the task starts: name => secret ARN."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for arn in values(var.secrets) : can(regex("^arn:[^:]+:secretsmanager:", arn))])
    error_message = "Every secret must be a Secrets Manager ARN."
  }
}

variable "port_mappings" {
  description = "Ports the container listens on."
  type = list(object({
    name           = string
    container_port = number
  }))
  default = []

  validation {
    condition     = alltrue([for p in var.port_mappings : p.container_port >= 1 && p.container_port <= 65535])
    error_message = "Ports are 1 to 65535."
  }
}

variable "load_balancer" {
  description = "Target group the tasks register in, and on which container port; null: none."
  type = object({
    target_group_arn = string
    container_port   = number
  })
  default = null
}

variable "health_check_grace_period_seconds" {
  description = "With a load balancer: how long its failing health checks are ignored after a task starts."
  type        = number
  default     = 30

  validation {
    condition     = var.health_check_grace_period_seconds >= 0 && var.health_check_grace_period_seconds <= 2147483647
    error_message = "The grace period is a non-negative number of seconds."
  }
}

variable "service_registry_arn" {
  description = "Cloud Map service the tasks register in (their addresses as DNS A records); null: none."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "Private subnets of the tasks (one per availability zone)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 1
    error_message = "At least one subnet is needed."
  }
}

variable "security_group_ids" {
  description = "Security groups of the tasks."
  type        = list(string)

  validation {
    condition     = length(var.security_group_ids) >= 1
    error_message = "At least one security group is needed."
  }
}

variable "desired_count" {
  description = "Tasks at creation; autoscaling moves it between min_count and max_count afterwards."
  type        = number
  default     = 2

  validation {
    condition     = var.desired_count >= 0
    error_message = "desired_count is not negative."
  }
}

variable "min_count" {
  description = "Fewest tasks autoscaling keeps."
  type        = number
  default     = 2

  validation {
    condition     = var.min_count >= 0
    error_message = "min_count is not negative."
  }
}

variable "max_count" {
  description = "Most tasks autoscaling starts."
  type        = number
  default     = 10

  validation {
    condition     = var.max_count >= 1
    error_message = "max_count is at least 1."
  }
}

variable "cpu_target" {
  description = "Average CPU utilisation (percent) that autoscaling keeps; null: no CPU policy."
  type        = number
  default     = 60

  validation {
    condition     = var.cpu_target == null ? true : (var.cpu_target > 0 && var.cpu_target <= 100)
    error_message = "cpu_target is a percentage."
  }
}

variable "memory_target" {
  description = "Average memory utilisation (percent) that autoscaling keeps; null: no memory policy."
  type        = number
  default     = null

  validation {
    condition     = var.memory_target == null ? true : (var.memory_target > 0 && var.memory_target <= 100)
    error_message = "memory_target is a percentage."
  }
}

variable "scale_in_cooldown" {
  description = "Seconds after a scale-in before the next one."
  type        = number
  default     = 300

  validation {
    condition     = var.scale_in_cooldown >= 0
    error_message = "The cooldown is not negative."
  }
}

variable "deployment_minimum_healthy_percent" {
  description = "Share of the desired count kept running during a deployment (a rolling restart)."
  type        = number
  default     = 100

  validation {
    condition     = var.deployment_minimum_healthy_percent >= 0 && var.deployment_minimum_healthy_percent <= 100
    error_message = "A percentage from 0 to 100."
  }
}

variable "deployment_maximum_percent" {
  description = "Most tasks during a deployment, as a share of the desired count."
  type        = number
  default     = 200

  validation {
    condition     = var.deployment_maximum_percent >= 100 && var.deployment_maximum_percent <= 200
    error_message = "A percentage from 100 to 200."
  }
}

variable "stop_timeout" {
  description = "Seconds between SIGTERM and SIGKILL: the service's drain must fit (Fargate allows at most 120)."
  type        = number
  default     = 60

  validation {
    condition     = var.stop_timeout >= 2 && var.stop_timeout <= 120
    error_message = "stop_timeout is 2 to 120 seconds."
  }
}

variable "nofile_limit" {
  description = "Open-file limit of the container (soft and hard): bounds a gateway's connections."
  type        = number
  default     = 65536

  validation {
    condition     = var.nofile_limit >= 1024 && var.nofile_limit <= 1048576
    error_message = "The open-file limit is 1024 to 1048576 (Fargate's maximum)."
  }
}

variable "log_retention_days" {
  description = "How long CloudWatch keeps the service's logs."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "A retention CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ..., 365, 400, ..., 3653)."
  }
}

variable "kms_key_arn" {
  description = "KMS key of the log group and of the secrets the task reads."
  type        = string

  validation {
    condition     = can(regex("^arn:[^:]+:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
