data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
}

# One key for what the platform keeps encrypted at rest: service logs, Secrets Manager secrets, the
# Redis AUTH URL. CloudWatch Logs must be allowed to use it explicitly.
data "aws_iam_policy_document" "kms" {
  # In a key policy, Resource "*" means the key the policy is attached to, nothing else:
  #checkov:skip=CKV_AWS_356:a key policy's "*" resource is this key only
  #checkov:skip=CKV_AWS_109:a key policy's "*" resource is this key only; the account root administers its own key
  #checkov:skip=CKV_AWS_111:a key policy's "*" resource is this key only; CloudWatch Logs is limited to this account's log groups
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncrypt"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.name}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.name}:${local.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: logs and secrets of the chat platform"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_in_days
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = var.container_insights
  }

  tags = var.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

# Gateways reach the chat service by this private DNS name (Cloud Map), with mutual TLS end to end.
resource "aws_service_discovery_private_dns_namespace" "this" {
  name        = var.namespace
  description = "${var.name}: internal names of the chat platform's services"
  vpc         = var.vpc_id
  tags        = var.tags
}
