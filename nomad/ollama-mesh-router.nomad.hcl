# ollama-mesh routers: the one Ollama endpoint clients use. Stateless; run two or more on
# different hosts behind a load balancer or Consul DNS (ollama-mesh-router.service.consul).
#
#   nomad job validate -var router_image=REGISTRY/ollama-mesh:0.1.0 nomad/ollama-mesh-router.nomad.hcl
#   nomad job plan     -var router_image=REGISTRY/ollama-mesh:0.1.0 nomad/ollama-mesh-router.nomad.hcl
#   nomad job run      -var router_image=REGISTRY/ollama-mesh:0.1.0 nomad/ollama-mesh-router.nomad.hcl
#
# Clients need API keys (keys_from_consul, the default): make them with
# `ollama-mesh-router keygen` (docs/operations.md).

variable "datacenters" {
  description = "Datacenters to run routers in."
  type        = list(string)
  default     = ["*"]
}

variable "router_image" {
  description = "A container image with /usr/local/bin/ollama-mesh-router (nomad/Dockerfile builds one from the release binaries)."
  type        = string
}

variable "router_count" {
  description = "Router replicas, each on its own host."
  type        = number
  default     = 2
}

variable "port" {
  description = "The client port on each router host (Ollama's, so clients need no change)."
  type        = number
  default     = 11434
}

variable "grace_period_seconds" {
  description = "How long running requests may finish when a router stops (e.g. during a rolling update): the longest expected generation. kill_timeout is derived from it."
  type        = number
  default     = 60
}

variable "keys_from_consul" {
  description = "Require API keys, read from Consul KV (ollama-mesh/keys/NAME). Without keys the router only starts with allow_anonymous."
  type        = bool
  default     = true
}

variable "allow_anonymous" {
  description = "Serve without API keys on the network (only behind something else that authenticates)."
  type        = bool
  default     = false
}

variable "mesh" {
  description = "Reach the nodes through Consul Connect mTLS (the GPU job's mesh = true)."
  type        = bool
  default     = false
}

job "ollama-mesh-router" {
  datacenters = var.datacenters
  type        = "service"

  # One replica at a time: the new one must pass its Consul check (/readyz: it has the fleet)
  # before the next old one stops, so capacity never drops by more than one router. A version
  # that never becomes healthy is rolled back to the last good one.
  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  group "router" {
    count = var.router_count

    # A host that fails takes one replica with it, never the service.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "http" {
        static = var.port
      }
      port "ops" {}
    }

    # On stop Nomad first removes the service from Consul, waits shutdown_delay so load balancers
    # and Consul DNS stop sending new connections, then sends kill_signal; the router then stops
    # accepting and lets running requests finish for grace_period_seconds.
    shutdown_delay = "10s"

    service {
      provider = "consul"
      name     = "ollama-mesh-router"
      port     = "http"
      tags     = ["ollama-mesh"]

      meta {
        # Prometheus' Consul discovery relabels the scrape target to this port.
        ops_port = "${NOMAD_PORT_ops}"
      }

      # /readyz answers 200 once the router has its first backend set and stays 200 while Consul
      # is unreachable (it routes on the last set), so an outage of Consul does not empty the
      # router pool; /healthz would pass before the router knows the fleet.
      check {
        name     = "readyz"
        type     = "http"
        port     = "ops"
        path     = "/readyz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "ollama-mesh-router" {
      driver = "docker"

      config {
        image   = var.router_image
        command = "/usr/local/bin/ollama-mesh-router"
        # The host's Consul agent on 127.0.0.1:8500, and the client port without NAT.
        network_mode = "host"
      }

      env {
        OLLAMA_MESH_LISTEN           = "0.0.0.0:${NOMAD_PORT_http}"
        OLLAMA_MESH_OPS_LISTEN       = "0.0.0.0:${NOMAD_PORT_ops}"
        OLLAMA_MESH_GRACE_PERIOD     = "${var.grace_period_seconds}s"
        OLLAMA_MESH_KEYS_FROM_CONSUL = var.keys_from_consul
        OLLAMA_MESH_ALLOW_ANONYMOUS  = var.allow_anonymous
        OLLAMA_MESH_MESH             = var.mesh
        # The job's service block registers the router: --register would register it twice.
        OLLAMA_MESH_REGISTER         = false
        OLLAMA_MESH_LOG_FORMAT       = "json"
        CONSUL_HTTP_ADDR             = "127.0.0.1:8500"
        # Workload identity (Nomad 1.7+): see docs/operations.md for the binding rule.
        CONSUL_HTTP_TOKEN_FILE       = "${NOMAD_SECRETS_DIR}/consul_token"
      }

      consul {}

      # kill_timeout must exceed the grace period, or Nomad cuts running generations short
      # (the client's max_kill_timeout must allow it too).
      kill_signal  = "SIGTERM"
      kill_timeout = "${var.grace_period_seconds + 15}s"

      resources {
        cpu    = 1000
        memory = 256
      }
    }
  }
}
