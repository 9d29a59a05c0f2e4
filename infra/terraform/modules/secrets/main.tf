# The platform's secrets, as empty Secrets Manager secrets: this module never holds a value, so none reaches
# the Terraform state. Operators put the values (docs/operations.md, "Deploy from zero"):
#   aws secretsmanager put-secret-value --secret-id ARN --secret-string file://value.pem
# Tasks receive them as environment variables (ECS `secrets`); the images' entry point writes the *_PEM ones
# to files for the binaries.

locals {
  services = ["gateway", "chat-service", "delivery-worker"]

  jwt = var.jwt_mode == "hmac" ? {
    name        = "jwt-secret"
    description = "HMAC secret (at least 32 bytes) of client tokens: GATEWAY_JWT_SECRET"
    } : {
    name        = "jwt-public-key"
    description = "PEM public key of client tokens: GATEWAY_JWT_PUBLIC_KEY_FILE, through GATEWAY_JWT_PUBLIC_KEY_PEM"
  }

  tls_secrets = var.internal_tls_enabled ? merge(
    { "ca" = "PEM certificate(s) of the internal CA: GRPC_TLS_CA_FILE of every service" },
    merge([for s in local.services : {
      "${s}/cert" = "PEM certificate chain of ${s}: GRPC_TLS_CERT_FILE"
      "${s}/key"  = "PEM private key of ${s}: GRPC_TLS_KEY_FILE"
    }]...),
  ) : {}
}

resource "aws_secretsmanager_secret" "jwt" {
  #checkov:skip=CKV2_AWS_57:the token key is the identity provider's, rotated with it by the operators' procedure (docs/operations.md); a rotation Lambda cannot mint it
  name                    = "${var.name}/${local.jwt.name}"
  description             = local.jwt.description
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.recovery_window_in_days
  tags                    = var.tags
}

resource "aws_secretsmanager_secret" "grpc_tls" {
  #checkov:skip=CKV2_AWS_57:certificates are renewed by the operators' procedure under the same CA (docs/operations.md); Secrets Manager cannot issue them
  for_each = local.tls_secrets

  name                    = "${var.name}/grpc-tls/${each.key}"
  description             = each.value
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.recovery_window_in_days
  tags                    = var.tags
}
