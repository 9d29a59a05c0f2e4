variable "name" {
  description = "Prefix of the secrets' names (NAME/jwt-secret, NAME/grpc-tls/gateway/cert, ...)."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,39}$", var.name))
    error_message = "The name must start with a letter and hold at most 40 letters, digits and hyphens."
  }
}

variable "jwt_mode" {
  description = "How gateways check client tokens: hmac (a shared secret, HS256/384/512) or public_key (RS*/PS*/ES*/EdDSA)."
  type        = string
  default     = "public_key"

  validation {
    condition     = contains(["hmac", "public_key"], var.jwt_mode)
    error_message = "jwt_mode is hmac or public_key."
  }
}

variable "internal_tls_enabled" {
  description = "Mutual TLS between the services: one CA secret, and a certificate and key secret per service."
  type        = bool
  default     = true
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the secrets."
  type        = string

  validation {
    condition     = can(regex("^arn:[^:]+:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "recovery_window_in_days" {
  description = "Days a deleted secret can still be restored (0 deletes at once)."
  type        = number
  default     = 30

  validation {
    condition     = var.recovery_window_in_days == 0 || (var.recovery_window_in_days >= 7 && var.recovery_window_in_days <= 30)
    error_message = "0, or 7 to 30 days."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
