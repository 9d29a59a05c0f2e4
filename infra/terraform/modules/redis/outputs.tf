output "url_secret_arn" {
  description = "ARN of the secret holding the whole Redis URL with its AUTH token (for GATEWAY_REDIS_URL, WORKER_REDIS_URL)."
  value       = aws_secretsmanager_secret.url.arn
}

output "primary_endpoint_address" {
  description = "DNS name of the primary (follows failovers)."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "port" {
  description = "Redis port."
  value       = var.port
}

output "replication_group_id" {
  description = "Id of the replication group (the CloudWatch dimension of its metrics)."
  value       = aws_elasticache_replication_group.this.id
}
