# ACL policy for ollama-mesh-sidecar on a GPU node (plain mode).
#   consul acl policy create -name ollama-mesh-sidecar -rules @sidecar-policy.hcl
# Replace "ollama" if the fleet uses another --service-name.

# Register, update and deregister its Ollama instance (with checks, Meta and maintenance).
service "ollama" {
  policy = "write"
}

# Read its own node, for the agent's view of the registration.
node_prefix "" {
  policy = "read"
}

# Follow the operator's drain key for this instance.
key_prefix "ollama-mesh/drain/" {
  policy = "read"
}
