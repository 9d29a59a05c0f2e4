output "service_name" {
  description = "Name of the ECS service (null without one)."
  value       = var.create_service ? aws_ecs_service.this[0].name : null
}

output "task_definition_arn" {
  description = "ARN of the task definition (with its revision)."
  value       = aws_ecs_task_definition.this.arn
}

output "task_family" {
  description = "Family of the task definition (what run-task takes)."
  value       = aws_ecs_task_definition.this.family
}

output "container_name" {
  description = "Name of the container in the task."
  value       = local.container_name
}

output "execution_role_arn" {
  description = "ARN of the execution role (image pull, logs, secrets)."
  value       = aws_iam_role.execution.arn
}

output "task_role_arn" {
  description = "ARN of the task role (no permission)."
  value       = aws_iam_role.task.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the service."
  value       = aws_cloudwatch_log_group.this.name
}
