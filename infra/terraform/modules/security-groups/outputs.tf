output "nlb_security_group_id" {
  description = "Security group of the gateways' load balancer."
  value       = aws_security_group.this["nlb"].id
}

output "gateway_security_group_id" {
  description = "Security group of the gateway tasks."
  value       = aws_security_group.this["gateway"].id
}

output "chat_service_security_group_id" {
  description = "Security group of the chat-service tasks."
  value       = aws_security_group.this["chat_service"].id
}

output "delivery_worker_security_group_id" {
  description = "Security group of the delivery-worker tasks."
  value       = aws_security_group.this["delivery_worker"].id
}

output "chatctl_security_group_id" {
  description = "Security group of the chatctl one-off tasks."
  value       = aws_security_group.this["chatctl"].id
}

output "kafka_security_group_id" {
  description = "Security group of the MSK brokers."
  value       = aws_security_group.this["kafka"].id
}

output "scylla_security_group_id" {
  description = "Security group of the ScyllaDB nodes."
  value       = aws_security_group.this["scylla"].id
}

output "redis_security_group_id" {
  description = "Security group of the ElastiCache replication group."
  value       = aws_security_group.this["redis"].id
}
