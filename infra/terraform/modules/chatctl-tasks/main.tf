# The one-off tasks of a deployment, as ECS task definitions of the chatctl image (no service): run each
# with `aws ecs run-task` (outputs run_migrate and run_create_topics) when deploying from zero and after an
# upgrade that brings a migration. Both are safe to run again: migrate applies only the migrations the
# keyspace lacks, create-topics creates only missing topics.
#   migrate        creates the keyspace (NetworkTopologyStrategy, 3 replicas) and applies CQL migrations
#   create-topics  creates the events topic (events_partitions, replication 3, min.insync.replicas 2,
#                  retention forever) and its dead-letter topic (1 partition)

locals {
  migrate_environment = {
    CHAT_CASSANDRA_NODES       = join(",", var.cassandra_contact_points)
    CHAT_CASSANDRA_KEYSPACE    = var.keyspace
    CHAT_CASSANDRA_REPLICATION = var.keyspace_replication
    RUST_LOG                   = var.rust_log
  }

  create_topics_environment = {
    CHAT_KAFKA_BROKERS      = var.kafka_bootstrap_brokers
    KAFKA_TLS               = tostring(var.kafka_tls)
    CHAT_EVENTS_TOPIC       = var.events_topic
    CHAT_EVENTS_PARTITIONS  = tostring(var.events_partitions)
    CHAT_EVENTS_REPLICATION = tostring(var.replication_factor)
    RUST_LOG                = var.rust_log
  }

  network = "awsvpcConfiguration={subnets=[${join(",", var.subnet_ids)}],securityGroups=[${var.security_group_id}],assignPublicIp=DISABLED}"
}

module "migrate" {
  source = "../ecs-service"

  name               = "${var.name}-migrate"
  create_service     = false
  cluster_arn        = var.cluster_arn
  image              = var.image
  command            = ["migrate"]
  cpu                = 256
  memory             = 512
  environment        = local.migrate_environment
  subnet_ids         = var.subnet_ids
  security_group_ids = [var.security_group_id]
  kms_key_arn        = var.kms_key_arn
  log_retention_days = var.log_retention_days
  tags               = var.tags
}

module "create_topics" {
  source = "../ecs-service"

  name               = "${var.name}-create-topics"
  create_service     = false
  cluster_arn        = var.cluster_arn
  image              = var.image
  command            = ["create-topics"]
  cpu                = 256
  memory             = 512
  environment        = local.create_topics_environment
  subnet_ids         = var.subnet_ids
  security_group_ids = [var.security_group_id]
  kms_key_arn        = var.kms_key_arn
  log_retention_days = var.log_retention_days
  tags               = var.tags
}
