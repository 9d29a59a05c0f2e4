output "cluster_arn" {
  description = "ARN of the MSK cluster."
  value       = aws_msk_cluster.this.arn
}

output "cluster_name" {
  description = "Name of the MSK cluster (the CloudWatch dimension of its metrics)."
  value       = aws_msk_cluster.this.cluster_name
}

output "bootstrap_brokers" {
  description = "Plaintext bootstrap brokers (host:9092,...); empty when client_broker_encryption is TLS."
  value       = aws_msk_cluster.this.bootstrap_brokers
}

output "bootstrap_brokers_tls" {
  description = "TLS bootstrap brokers (host:9094,...), what the services use (KAFKA_TLS); empty when client_broker_encryption is PLAINTEXT."
  value       = aws_msk_cluster.this.bootstrap_brokers_tls
}

output "events_partitions" {
  description = "Partitions the events topic is to have (give it to chatctl-tasks and delivery-worker)."
  value       = var.events_partitions
}

output "replication_factor" {
  description = "Replication factor the topics are to have."
  value       = var.replication_factor
}
