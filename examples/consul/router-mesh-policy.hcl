# ACL policy for ollama-mesh-router with --mesh.
#   consul acl policy create -name ollama-mesh-router-mesh -rules @router-mesh-policy.hcl
#
# service:write on the router's own service (--mesh-service, default ollama-mesh-router) is what
# lets it take that service's Connect leaf certificate: its identity in the mesh. The CA roots
# need no ACL.

service "ollama" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
key_prefix "ollama-mesh/" {
  policy = "read"
}
service "ollama-mesh-router" {
  policy = "write"
}
