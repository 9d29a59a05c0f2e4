output "contact_points" {
  description = "host:port of every node's CQL port (CHAT_CASSANDRA_NODES, WORKER_CASSANDRA_NODES)."
  value       = [for ip in aws_network_interface.node[*].private_ip : "${ip}:9042"]
}

output "private_ips" {
  description = "Private address of every node."
  value       = aws_network_interface.node[*].private_ip
}

output "instance_ids" {
  description = "EC2 instance of every node."
  value       = aws_instance.node[*].id
}

output "datacenter" {
  description = "The nodes' datacenter."
  value       = var.datacenter
}

output "keyspace_replication" {
  description = "CQL replication map of the keyspace (CHAT_CASSANDRA_REPLICATION of chatctl migrate)."
  value       = "{'class': 'NetworkTopologyStrategy', '${var.datacenter}': ${var.replication_factor}}"
}
