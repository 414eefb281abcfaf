# ACL policy for ollama-mesh-router (plain mode).
#   consul acl policy create -name ollama-mesh-router -rules @router-policy.hcl

# Discover the fleet: instances, their checks and their nodes.
service "ollama" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}

# Drain keys, API keys and router settings.
key_prefix "ollama-mesh/" {
  policy = "read"
}

# --register: the router's own service and check.
service "ollama-mesh-router" {
  policy = "write"
}
