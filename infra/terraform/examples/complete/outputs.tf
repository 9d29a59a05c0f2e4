output "wss_url" {
  description = "Where clients connect."
  value       = module.gateway.wss_url
}

output "secrets_to_fill" {
  description = "Secrets Manager secrets to give values to before the services start (docs/operations.md)."
  value       = module.secrets.all_secret_arns
}

output "run_migrate" {
  description = "Run once before the services start: creates the keyspace."
  value       = module.chatctl.run_migrate
}

output "run_create_topics" {
  description = "Run once before the services start: creates the topics."
  value       = module.chatctl.run_create_topics
}

output "chat_service_url" {
  description = "Internal gRPC URL of the chat service."
  value       = module.chat_service.url
}
