terraform {
  required_version = ">= 1.5.0"

  # No provider of its own: the ecs-service module makes its AWS resources.
}
