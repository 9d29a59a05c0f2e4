output "service_name" {
  description = "Name of the ECS service."
  value       = module.service.service_name
}

output "log_group_name" {
  description = "CloudWatch log group of the workers."
  value       = module.service.log_group_name
}

output "metrics_port" {
  description = "Port of GET /metrics on every task."
  value       = var.metrics_port
}
