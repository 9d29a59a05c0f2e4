# The whole platform in an existing VPC: three private subnets (one per zone) for the services and the
# data tier, public subnets for the gateways' load balancer.
provider "aws" {
  region = var.region

  default_tags {
    tags = var.tags
  }
}

locals {
  events_topic = "chat.events.v1"
  worker_group = "delivery-worker"
  redis_prefix = "chat:"
}

module "cluster" {
  source = "../../modules/ecs-cluster"

  name   = var.name
  vpc_id = var.vpc_id
}

module "security_groups" {
  source = "../../modules/security-groups"

  name                              = var.name
  vpc_id                            = var.vpc_id
  client_cidr_blocks                = var.client_cidr_blocks
  metrics_source_security_group_ids = var.metrics_source_security_group_ids
  # The services reach MSK over TLS (KAFKA_TLS): the brokers' TLS port.
  kafka_port = 9094
}

module "secrets" {
  source = "../../modules/secrets"

  name        = var.name
  jwt_mode    = "public_key"
  kms_key_arn = module.cluster.kms_key_arn
}

module "kafka" {
  source = "../../modules/kafka"

  name              = var.name
  subnet_ids        = var.private_subnet_ids
  security_group_id = module.security_groups.kafka_security_group_id
  kms_key_arn       = module.cluster.kms_key_arn
  events_partitions = var.events_partitions
  # TLS between brokers and with every client (port 9094).
  client_broker_encryption = "TLS"
}

module "scylla" {
  source = "../../modules/scylla"

  name              = "${var.name}-scylla"
  ami_id            = var.scylla_ami_id
  subnet_ids        = var.private_subnet_ids
  security_group_id = module.security_groups.scylla_security_group_id
  kms_key_arn       = module.cluster.kms_key_arn
}

module "redis" {
  source = "../../modules/redis"

  name              = "${var.name}-presence"
  subnet_ids        = var.private_subnet_ids
  security_group_id = module.security_groups.redis_security_group_id
  kms_key_arn       = module.cluster.kms_key_arn
  # AUTH and TLS on every connection (the URL secret is rediss://).
  transit_encryption_mode = "required"
}

module "chatctl" {
  source = "../../modules/chatctl-tasks"

  name                     = "${var.name}-chatctl"
  cluster_arn              = module.cluster.cluster_arn
  image                    = "${var.image_repository}/chatctl:${var.image_tag}"
  subnet_ids               = var.private_subnet_ids
  security_group_id        = module.security_groups.chatctl_security_group_id
  kms_key_arn              = module.cluster.kms_key_arn
  cassandra_contact_points = module.scylla.contact_points
  keyspace_replication     = module.scylla.keyspace_replication
  kafka_bootstrap_brokers  = module.kafka.bootstrap_brokers_tls
  events_topic             = local.events_topic
  events_partitions        = module.kafka.events_partitions
  replication_factor       = module.kafka.replication_factor
}

module "chat_service" {
  source = "../../modules/chat-service"

  name                     = "${var.name}-chat-service"
  cluster_arn              = module.cluster.cluster_arn
  image                    = "${var.image_repository}/chat-service:${var.image_tag}"
  subnet_ids               = var.private_subnet_ids
  security_group_id        = module.security_groups.chat_service_security_group_id
  namespace_id             = module.cluster.namespace_id
  namespace_name           = module.cluster.namespace_name
  kms_key_arn              = module.cluster.kms_key_arn
  kafka_bootstrap_brokers  = module.kafka.bootstrap_brokers_tls
  events_topic             = local.events_topic
  cassandra_contact_points = module.scylla.contact_points
  worker_group_id          = local.worker_group
  grpc_tls                 = module.secrets.grpc_tls["chat-service"]
}

module "gateway" {
  source = "../../modules/gateway"

  name                  = "${var.name}-gateway"
  cluster_arn           = module.cluster.cluster_arn
  image                 = "${var.image_repository}/gateway:${var.image_tag}"
  vpc_id                = var.vpc_id
  subnet_ids            = var.private_subnet_ids
  lb_subnet_ids         = var.public_subnet_ids
  security_group_id     = module.security_groups.gateway_security_group_id
  nlb_security_group_id = module.security_groups.nlb_security_group_id
  certificate_arn       = var.certificate_arn
  kms_key_arn           = module.cluster.kms_key_arn
  chat_service_url      = module.chat_service.url
  redis_url_secret_arn  = module.redis.url_secret_arn
  redis_prefix          = local.redis_prefix
  jwt_public_key_arn    = module.secrets.jwt_public_key_arn
  jwt_algorithms        = var.jwt_algorithms
  jwt_issuer            = var.jwt_issuer
  jwt_audience          = var.jwt_audience
  allowed_origins       = var.allowed_origins
  grpc_tls              = module.secrets.grpc_tls["gateway"]
}

module "delivery_worker" {
  source = "../../modules/delivery-worker"

  name                     = "${var.name}-delivery-worker"
  cluster_arn              = module.cluster.cluster_arn
  image                    = "${var.image_repository}/delivery-worker:${var.image_tag}"
  subnet_ids               = var.private_subnet_ids
  security_group_id        = module.security_groups.delivery_worker_security_group_id
  kms_key_arn              = module.cluster.kms_key_arn
  kafka_bootstrap_brokers  = module.kafka.bootstrap_brokers_tls
  events_topic             = local.events_topic
  events_partitions        = module.kafka.events_partitions
  group_id                 = local.worker_group
  cassandra_contact_points = module.scylla.contact_points
  redis_url_secret_arn     = module.redis.url_secret_arn
  redis_prefix             = local.redis_prefix
  grpc_tls                 = module.secrets.grpc_tls["delivery-worker"]
  max_count                = min(12, var.events_partitions)
}
