terraform {
  required_version = ">= 1.5.0"

  # No provider of its own: its resources are made by the ecs-service module (and the built-in terraform_data).
}
