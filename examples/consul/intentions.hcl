# Only routers may reach the GPU nodes; everything else in the mesh is denied.
#   consul config write intentions.hcl
# The same entry is editable in the Consul UI (Services → ollama → Intentions, or the
# Intentions page), and through the HTTP API: PUT /v1/config with this entry as JSON.
Kind = "service-intentions"
Name = "ollama"
Sources = [
  {
    Name   = "ollama-mesh-router"
    Action = "allow"
  },
  {
    Name   = "*"
    Action = "deny"
  },
]
