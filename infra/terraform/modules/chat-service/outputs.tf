output "url" {
  description = "URL gateways dial (GATEWAY_CHAT_SERVICE_URLS): https:// with mutual TLS, http:// without."
  value       = "${var.grpc_tls == null ? "http" : "https"}://${local.dns_name}:${var.grpc_port}"
}

output "dns_name" {
  description = "Private DNS name of the chat-service tasks."
  value       = local.dns_name
}

output "service_name" {
  description = "Name of the ECS service."
  value       = module.service.service_name
}

output "log_group_name" {
  description = "CloudWatch log group of the chat services."
  value       = module.service.log_group_name
}

output "metrics_port" {
  description = "Port of GET /metrics on every task."
  value       = var.metrics_port
}
