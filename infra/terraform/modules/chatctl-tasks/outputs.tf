output "migrate_task_definition_arn" {
  description = "Task definition of chatctl migrate."
  value       = module.migrate.task_definition_arn
}

output "create_topics_task_definition_arn" {
  description = "Task definition of chatctl create-topics."
  value       = module.create_topics.task_definition_arn
}

output "run_migrate" {
  description = "The command that runs chatctl migrate once."
  value       = "aws ecs run-task --cluster ${var.cluster_arn} --launch-type FARGATE --task-definition ${module.migrate.task_family} --network-configuration '${local.network}'"
}

output "run_create_topics" {
  description = "The command that runs chatctl create-topics once."
  value       = "aws ecs run-task --cluster ${var.cluster_arn} --launch-type FARGATE --task-definition ${module.create_topics.task_family} --network-configuration '${local.network}'"
}
