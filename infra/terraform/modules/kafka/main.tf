# Amazon MSK: the event log. Brokers spread over the given subnets (one per availability zone), replication
# factor 3 and min.insync.replicas 2 by default, so a send acknowledged with acks=all survives the loss of a
# zone. MSK creates no topic: the events topic and its dead-letter topic are created by `chatctl
# create-topics`, run once as a one-off ECS task (module chatctl-tasks), with the settings in README.md.

locals {
  server_properties = merge(
    {
      "auto.create.topics.enable"                = "false"
      "default.replication.factor"               = tostring(var.replication_factor)
      "min.insync.replicas"                      = tostring(var.min_insync_replicas)
      "unclean.leader.election.enable"           = "false"
      "offsets.topic.replication.factor"         = tostring(var.replication_factor)
      "transaction.state.log.replication.factor" = tostring(var.replication_factor)
      "transaction.state.log.min.isr"            = tostring(var.min_insync_replicas)
      "num.partitions"                           = tostring(var.events_partitions)
      "log.retention.ms"                         = "-1"
    },
    var.extra_server_properties,
  )
}

resource "aws_msk_configuration" "this" {
  name              = var.name
  description       = "${var.name}: broker settings of the chat platform's event log"
  kafka_versions    = [var.kafka_version]
  server_properties = join("\n", [for k in sort(keys(local.server_properties)) : "${k}=${local.server_properties[k]}"])

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_cloudwatch_log_group" "broker" {
  name              = "/msk/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_msk_cluster" "this" {
  cluster_name           = var.name
  kafka_version          = var.kafka_version
  number_of_broker_nodes = var.broker_count
  enhanced_monitoring    = var.enhanced_monitoring

  broker_node_group_info {
    instance_type   = var.broker_instance_type
    client_subnets  = var.subnet_ids
    security_groups = [var.security_group_id]

    storage_info {
      ebs_storage_info {
        volume_size = var.broker_volume_size
      }
    }

    connectivity_info {
      public_access {
        type = "DISABLED"
      }
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.this.arn
    revision = aws_msk_configuration.this.latest_revision
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = var.kms_key_arn

    encryption_in_transit {
      client_broker = var.client_broker_encryption
      in_cluster    = true
    }
  }

  open_monitoring {
    prometheus {
      jmx_exporter {
        enabled_in_broker = true
      }
      node_exporter {
        enabled_in_broker = true
      }
    }
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.broker.name
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.broker_count % length(var.subnet_ids) == 0
      error_message = "broker_count must be a multiple of the number of subnets (MSK spreads brokers evenly over zones)."
    }
    precondition {
      condition     = var.replication_factor <= var.broker_count && var.min_insync_replicas < var.replication_factor
      error_message = "Need replication_factor <= broker_count and min_insync_replicas < replication_factor (so one broker can be lost)."
    }
  }

  tags = var.tags
}
