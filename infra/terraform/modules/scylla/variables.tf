variable "name" {
  description = "Prefix of the nodes' names."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,39}$", var.name))
    error_message = "The name must start with a letter and hold at most 40 letters, digits and hyphens."
  }
}

variable "ami_id" {
  description = "The nodes' image: ScyllaDB's AMI for the region (or one built the same way)."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]+$", var.ami_id))
    error_message = "An AMI id, e.g. ami-0123abcd."
  }
}

variable "instance_type" {
  description = "Instance type with local NVMe (instance store): i4i, i3en, i4g, i7ie, im4gn, is4gen, i8g families."
  type        = string
  default     = "i4i.2xlarge"

  validation {
    condition     = can(regex("^(i3|i3en|i4i|i4g|i7i|i7ie|i8g|i8ge|im4gn|is4gen)\\.", var.instance_type))
    error_message = "An instance type with local NVMe storage (i3, i3en, i4i, i4g, i7i, i7ie, i8g, i8ge, im4gn, is4gen)."
  }
}

variable "node_count" {
  description = "Number of nodes: a multiple of the number of subnets, at least 3."
  type        = number
  default     = 3

  validation {
    condition     = var.node_count >= 3
    error_message = "At least 3 nodes, for 3 replicas."
  }
}

variable "subnet_ids" {
  description = "Private subnets of the nodes, one per availability zone (3)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) == 3
    error_message = "Three subnets, in three availability zones."
  }
}

variable "security_group_id" {
  description = "Security group of the nodes (module security-groups: scylla)."
  type        = string
}

variable "cluster_name" {
  description = "ScyllaDB cluster name (the same on every node)."
  type        = string
  default     = "chat"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_-]+$", var.cluster_name))
    error_message = "Letters, digits, underscores and hyphens."
  }
}

variable "datacenter" {
  description = "Datacenter name of the nodes (GossipingPropertyFileSnitch); the keyspace replicates 3 times in it."
  type        = string
  default     = "dc1"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_-]+$", var.datacenter))
    error_message = "Letters, digits, underscores and hyphens."
  }
}

variable "replication_factor" {
  description = "Replicas of every row in the datacenter (keyspace_replication)."
  type        = number
  default     = 3

  validation {
    condition     = var.replication_factor >= 3
    error_message = "At least 3."
  }
}

variable "root_volume_size" {
  description = "Root volume (not the data: that is on the NVMe devices), in GiB."
  type        = number
  default     = 50

  validation {
    condition     = var.root_volume_size >= 20
    error_message = "At least 20 GiB."
  }
}

variable "kms_key_arn" {
  description = "KMS key of the root volumes."
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
