output "jwt_secret_arn" {
  description = "ARN of the HMAC secret of client tokens (jwt_mode hmac), else null."
  value       = var.jwt_mode == "hmac" ? aws_secretsmanager_secret.jwt.arn : null
}

output "jwt_public_key_arn" {
  description = "ARN of the PEM public key of client tokens (jwt_mode public_key), else null."
  value       = var.jwt_mode == "public_key" ? aws_secretsmanager_secret.jwt.arn : null
}

output "grpc_tls" {
  description = "Per service (gateway, chat-service, delivery-worker): ARNs of its certificate, key and the CA; null without internal TLS."
  value = var.internal_tls_enabled ? {
    for s in local.services : s => {
      cert_arn = aws_secretsmanager_secret.grpc_tls["${s}/cert"].arn
      key_arn  = aws_secretsmanager_secret.grpc_tls["${s}/key"].arn
      ca_arn   = aws_secretsmanager_secret.grpc_tls["ca"].arn
    }
  } : null
}

output "all_secret_arns" {
  description = "Every secret this module created (to fill after apply)."
  value       = concat([aws_secretsmanager_secret.jwt.arn], [for s in aws_secretsmanager_secret.grpc_tls : s.arn])
}
