# ACL policy for ollama-mesh-sidecar with --mesh (Consul Connect-native).
#   consul acl policy create -name ollama-mesh-sidecar-mesh -rules @sidecar-mesh-policy.hcl
#
# service:write on the node service covers registering it, taking its Connect leaf certificate
# (/v1/agent/connect/ca/leaf/ollama) and asking the agent to authorize clients against it
# (/v1/agent/connect/authorize). intentions:read lets the sidecar follow intention changes, so it
# can close connections of a client that an operator has just denied. The CA roots need no ACL.

service "ollama" {
  policy     = "write"
  intentions = "read"
}

node_prefix "" {
  policy = "read"
}

key_prefix "ollama-mesh/drain/" {
  policy = "read"
}
