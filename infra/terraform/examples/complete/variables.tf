variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Name of the deployment: prefix of everything it creates."
  type        = string
  default     = "chat"
}

variable "vpc_id" {
  description = "The existing VPC."
  type        = string
}

variable "private_subnet_ids" {
  description = "Three private subnets, one per availability zone, with a route to AWS APIs (NAT gateway or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) == 3
    error_message = "Three private subnets, in three availability zones."
  }
}

variable "public_subnet_ids" {
  description = "Public subnets of the gateways' load balancer."
  type        = list(string)
}

variable "client_cidr_blocks" {
  description = "Where clients connect from."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "metrics_source_security_group_ids" {
  description = "Security groups of Prometheus scrapers of the services' /metrics (gateways, chat services, workers)."
  type        = list(string)
  default     = []
}

variable "certificate_arn" {
  description = "ACM certificate of the clients' wss:// host name."
  type        = string
}

variable "scylla_ami_id" {
  description = "ScyllaDB's AMI for the region."
  type        = string
}

variable "image_repository" {
  description = "Registry path holding the images pushed from target/images (e.g. ACCOUNT.dkr.ecr.REGION.amazonaws.com/chat)."
  type        = string
}

variable "image_tag" {
  description = "Tag of the images to run (e.g. the git commit they were built from)."
  type        = string
}

variable "events_partitions" {
  description = "Partitions of the events topic (docs/operations.md before changing it after the first deploy)."
  type        = number
  default     = 24
}

variable "jwt_algorithms" {
  description = "Algorithms of the client tokens, matching the public key's kind (e.g. [\"ES256\"] for a P-256 key)."
  type        = list(string)
  default     = ["ES256"]
}

variable "jwt_issuer" {
  description = "Required iss claim of client tokens; null: not checked."
  type        = string
  default     = null
}

variable "jwt_audience" {
  description = "Required aud claim of client tokens; null: not checked."
  type        = string
  default     = null
}

variable "allowed_origins" {
  description = "Allowed Origin values of browser clients; empty: not checked."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = { project = "chat" }
}
