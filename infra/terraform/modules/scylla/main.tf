# ScyllaDB nodes on EC2 instances with local NVMe (instance store), spread over the subnets (one per zone).
# Each node has its own network interface, created first, so every node's address (and so the seeds) is
# known before any instance boots, and stays the same when an instance is replaced.
# The image is an input: ScyllaDB's AMI for the region, whose first boot reads the user data below (its
# "Scylla AMI user-data" format: scylla.yaml settings, a script run before ScyllaDB starts), builds a RAID
# of the NVMe devices and starts ScyllaDB. The keyspace is created by `chatctl migrate` (module
# chatctl-tasks) with NetworkTopologyStrategy and 3 replicas in this datacenter (output keyspace_replication).

data "aws_subnet" "this" {
  count = length(var.subnet_ids)
  id    = var.subnet_ids[count.index]
}

locals {
  node_subnets = [for i in range(var.node_count) : data.aws_subnet.this[i % length(var.subnet_ids)]]
  seeds        = join(",", slice(aws_network_interface.node[*].private_ip, 0, min(3, var.node_count)))
}

resource "aws_network_interface" "node" {
  count = var.node_count

  subnet_id       = local.node_subnets[count.index].id
  security_groups = [var.security_group_id]
  description     = "${var.name} node ${count.index}"
  tags            = merge(var.tags, { Name = "${var.name}-${count.index}" })
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# Operators reach the nodes through SSM Session Manager (nodetool, cqlsh): no SSH port is open.
resource "aws_iam_role" "node" {
  name_prefix        = "${substr(var.name, 0, 30)}-node-"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "ssm" {
  role       = aws_iam_role.node.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "node" {
  name_prefix = "${substr(var.name, 0, 30)}-node-"
  role        = aws_iam_role.node.name
  tags        = var.tags
}

resource "aws_instance" "node" {
  count = var.node_count

  ami                  = var.ami_id
  instance_type        = var.instance_type
  iam_instance_profile = aws_iam_instance_profile.node.name
  ebs_optimized        = true
  monitoring           = true

  network_interface {
    device_index         = 0
    network_interface_id = aws_network_interface.node[count.index].id
  }

  metadata_options {
    http_tokens   = "required"
    http_endpoint = "enabled"
  }

  root_block_device {
    encrypted   = true
    kms_key_id  = var.kms_key_arn
    volume_type = "gp3"
    volume_size = var.root_volume_size
  }

  user_data = jsonencode({
    scylla_yaml = {
      cluster_name    = var.cluster_name
      endpoint_snitch = "GossipingPropertyFileSnitch"
      seed_provider = [{
        class_name = "org.apache.cassandra.locator.SimpleSeedProvider"
        parameters = [{ seeds = local.seeds }]
      }]
    }
    # Runs before ScyllaDB first starts: the datacenter is ours, the rack is the zone, so that
    # NetworkTopologyStrategy puts the 3 replicas of every row in 3 zones.
    post_configuration_script = base64encode(join("\n", [
      "#!/bin/sh",
      "printf 'dc=%s\\nrack=%s\\nprefer_local=true\\n' '${var.datacenter}' '${local.node_subnets[count.index].availability_zone}' >/etc/scylla/cassandra-rackdc.properties",
    ]))
    start_scylla_on_first_boot = true
  })

  lifecycle {
    # A replaced instance loses its NVMe data: never replace a node because its user data or image changed
    # (docs/operations.md, "Replace a ScyllaDB node").
    ignore_changes = [user_data, ami]

    precondition {
      condition     = var.node_count % length(var.subnet_ids) == 0
      error_message = "node_count must be a multiple of the number of subnets, so every zone holds as many nodes."
    }
  }

  tags = merge(var.tags, { Name = "${var.name}-${count.index}" })
}
