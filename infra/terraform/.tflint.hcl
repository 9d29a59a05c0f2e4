# TFLint with its bundled Terraform rules only (no plugin is downloaded): every rule of the bundled ruleset.
plugin "terraform" {
  enabled = true
  preset  = "all"
}
