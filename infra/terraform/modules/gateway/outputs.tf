output "wss_url" {
  description = "Where clients connect (point your DNS name at the balancer; the certificate must name it)."
  value       = "wss://${aws_lb.this.dns_name}/v1/ws"
}

output "lb_dns_name" {
  description = "DNS name of the load balancer."
  value       = aws_lb.this.dns_name
}

output "lb_zone_id" {
  description = "Route 53 zone of the load balancer (for an alias record)."
  value       = aws_lb.this.zone_id
}

output "lb_arn_suffix" {
  description = "ARN suffix of the load balancer (the CloudWatch dimension of its metrics)."
  value       = aws_lb.this.arn_suffix
}

output "target_group_arn_suffix" {
  description = "ARN suffix of the target group (CloudWatch dimension)."
  value       = aws_lb_target_group.this.arn_suffix
}

output "service_name" {
  description = "Name of the ECS service."
  value       = module.service.service_name
}

output "log_group_name" {
  description = "CloudWatch log group of the gateways."
  value       = module.service.log_group_name
}

output "metrics_port" {
  description = "Port of GET /metrics on every task."
  value       = var.metrics_port
}
