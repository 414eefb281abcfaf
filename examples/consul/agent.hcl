# A Consul client agent on a GPU node or a router host, as ollama-mesh expects it:
# ACLs on with default deny, Connect on (for --mesh), TLS to the servers and on its own HTTPS
# port, and plain HTTP on loopback only. Copy to /etc/consul.d/agent.hcl and adjust the
# addresses, paths and datacenter; examples/consul/README.md explains each part.
#
#   consul validate /etc/consul.d/

datacenter = "dc1"
data_dir   = "/opt/consul"
server     = false

# The servers to join (or cloud auto-join, e.g. "provider=aws tag_key=consul tag_value=server").
retry_join = ["consul-server-1.example.internal", "consul-server-2.example.internal", "consul-server-3.example.internal"]

# Cluster traffic on the node's private address; the HTTP API on loopback only, where the
# sidecar and the router reach it (they always talk to their local agent).
bind_addr   = "{{ GetPrivateIP }}"
client_addr = "127.0.0.1"

ports {
  # Plain HTTP on loopback for local tools; set it to -1 to force HTTPS everywhere.
  http  = 8500
  https = 8501
  # gRPC over TLS, used by Envoy-based proxies; ollama-mesh's Connect-native mode needs none.
  grpc_tls = 8503
}

# The agent's HTTP API can also be a unix socket, reachable by file permissions alone
# (CONSUL_HTTP_ADDR=unix:///run/consul/http.sock): then set client_addr to "" above.
# addresses {
#   http = "unix:///run/consul/http.sock"
# }
# unix_sockets {
#   mode = "0770"
#   group = "ollama-mesh"
# }

acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
  tokens {
    # The agent's own token (node:write on this node), created from the servers:
    #   consul acl token create -description "agent gpu-01" -node-identity "gpu-01:dc1"
    agent = "00000000-0000-0000-0000-000000000000"
  }
}

# Service mesh: the sidecar takes Connect leaf certificates from this agent and asks it to
# authorize clients against the intentions (examples/consul/intentions.hcl).
connect {
  enabled = true
}

# TLS: verify the servers and present this agent's certificate to them (RPC); serve HTTPS
# with the same certificate. Files from `consul tls ca create` / `consul tls cert create -client`
# or the organisation's PKI.
tls {
  defaults {
    ca_file         = "/etc/consul.d/tls/consul-agent-ca.pem"
    cert_file       = "/etc/consul.d/tls/dc1-client-consul-0.pem"
    key_file        = "/etc/consul.d/tls/dc1-client-consul-0-key.pem"
    verify_incoming = false
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
  https {
    # true requires a client certificate from every HTTPS client, the sidecar and router
    # included (CONSUL_CLIENT_CERT / CONSUL_CLIENT_KEY).
    verify_incoming = false
  }
}

# Gossip encryption key shared by the datacenter (`consul keygen`).
encrypt = "REPLACE-WITH-consul-keygen-OUTPUT="

# Catalog copies of check output are refreshed at most this often (the sidecar's one-line node
# summary in the UI); status changes are always immediate.
check_update_interval = "5m"
