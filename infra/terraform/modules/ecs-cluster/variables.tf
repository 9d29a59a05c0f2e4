variable "name" {
  description = "Name of the ECS cluster, and prefix of what this module creates."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,39}$", var.name))
    error_message = "The name must start with a letter and hold at most 40 letters, digits and hyphens."
  }
}

variable "vpc_id" {
  description = "The existing VPC the platform runs in."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "The VPC id looks like vpc-0123abcd."
  }
}

variable "namespace" {
  description = "Private DNS namespace (Cloud Map) in which the services are registered, e.g. chat.internal."
  type        = string
  default     = "chat.internal"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$", var.namespace))
    error_message = "The namespace must be a DNS name with at least two labels."
  }
}

variable "container_insights" {
  description = "CloudWatch Container Insights for the cluster: enabled, enhanced or disabled."
  type        = string
  default     = "enabled"

  validation {
    condition     = contains(["enabled", "enhanced", "disabled"], var.container_insights)
    error_message = "container_insights is enabled, enhanced or disabled."
  }
}

variable "kms_deletion_window_in_days" {
  description = "Waiting period before the platform's KMS key is deleted, in days."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_in_days >= 7 && var.kms_deletion_window_in_days <= 30
    error_message = "The deletion window is 7 to 30 days."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
