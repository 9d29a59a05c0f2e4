output "cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = aws_ecs_cluster.this.arn
}

output "cluster_name" {
  description = "Name of the ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "kms_key_arn" {
  description = "ARN of the KMS key for logs and secrets."
  value       = aws_kms_key.this.arn
}

output "namespace_id" {
  description = "Id of the private DNS namespace in which services register."
  value       = aws_service_discovery_private_dns_namespace.this.id
}

output "namespace_name" {
  description = "Name of the private DNS namespace."
  value       = aws_service_discovery_private_dns_namespace.this.name
}
