# Ollama and its ollama-mesh sidecar on every NVIDIA GPU node of the cluster.
#
#   nomad job validate -var sidecar_image=REGISTRY/ollama-mesh:0.1.0 nomad/ollama-gpu.nomad.hcl
#   nomad job plan     -var sidecar_image=REGISTRY/ollama-mesh:0.1.0 nomad/ollama-gpu.nomad.hcl
#   nomad job run      -var sidecar_image=REGISTRY/ollama-mesh:0.1.0 nomad/ollama-gpu.nomad.hcl
#
# Add -var mesh=true for the service mesh (Ollama on loopback, reachable only through the
# sidecar's Connect mTLS listener). docs/operations.md covers the client configuration this job
# expects (host volume, NVIDIA device plugin, max_kill_timeout) and the Consul ACL setup.
#
# The sidecar, not Nomad, registers the node in Consul: its instance ID, Meta, checks and
# maintenance are the fleet's contract, and Nomad's own registrations would carry the
# `_nomad-task-` ID prefix. So no `service` block here.

variable "datacenters" {
  description = "Datacenters whose GPU nodes run Ollama."
  type        = list(string)
  default     = ["*"]
}

variable "ollama_image" {
  description = "The Ollama container image."
  type        = string
  default     = "ollama/ollama:0.17.4"
}

variable "sidecar_image" {
  description = "A container image with /usr/local/bin/ollama-mesh-sidecar (nomad/Dockerfile builds one from the release binaries)."
  type        = string
}

variable "mesh" {
  description = "Service mesh: Ollama binds loopback only and the sidecar serves it over Consul Connect mTLS on mesh_port."
  type        = bool
  default     = false
}

variable "ollama_port" {
  description = "Ollama's port on the node (what routers reach outside the mesh)."
  type        = number
  default     = 11434
}

variable "mesh_port" {
  description = "The sidecar's Connect mTLS port in mesh mode (what routers reach in the mesh)."
  type        = number
  default     = 11444
}

variable "metrics_port" {
  description = "The sidecar's Prometheus metrics port (examples/prometheus/prometheus.yml scrapes it on every node)."
  type        = number
  default     = 11445
}

variable "gpu_count" {
  description = "GPUs Ollama takes on each node; set it to the GPUs per node, so Ollama gets them all."
  type        = number
  default     = 1
}

variable "parallel_slots" {
  description = "OLLAMA_NUM_PARALLEL, passed to Ollama and to the sidecar alike (Ollama does not report it)."
  type        = number
  default     = 4
}

variable "drain_timeout_seconds" {
  description = "How long the sidecar lets running requests finish before it deregisters: the longest expected generation. The tasks' kill_timeout is derived from it."
  type        = number
  default     = 60
}

variable "preemptible" {
  description = "The nodes are preemptible (spot): marked in Meta, so operators and dashboards see it."
  type        = bool
  default     = false
}

variable "preemption_notice_url" {
  description = "A cloud metadata URL that answers 200 when preemption is imminent (AWS: http://169.254.169.254/latest/meta-data/spot/instance-action); empty for none."
  type        = string
  default     = ""
}

variable "models_host_volume" {
  description = "The Nomad client host volume holding Ollama's models (client config: host_volume \"ollama-models\" { path = \"/var/lib/ollama\" })."
  type        = string
  default     = "ollama-models"
}

variable "ollama_memory_mb" {
  description = "Memory reserved for Ollama (models offloaded to the CPU live here)."
  type        = number
  default     = 16384
}

job "ollama-gpu" {
  datacenters = var.datacenters
  # One allocation on every eligible node; a node joining the cluster gets one at once.
  type = "system"

  # A new version replaces one node at a time: each old allocation drains (the sidecar's drain
  # period) before it stops, so an update never takes more than one node's capacity away.
  update {
    max_parallel = 1
    stagger      = "30s"
  }

  group "ollama" {
    # Host networking: Ollama's loopback address is the node's, so in mesh mode nothing but the
    # sidecar (and the node's Consul agent, which runs the HTTP check) can reach it. The static
    # ports reserve Ollama's, the mesh and the metrics port on the node.
    network {
      mode = "host"
      port "ollama" {
        static = var.ollama_port
      }
      port "mesh" {
        static = var.mesh_port
      }
      port "metrics" {
        static = var.metrics_port
      }
    }

    volume "models" {
      type   = "host"
      source = var.models_host_volume
    }

    # A crashed task comes back in place; a node that loops on failures is left alone after a few
    # tries rather than flapping in and out of the fleet.
    restart {
      attempts = 5
      interval = "10m"
      delay    = "15s"
      mode     = "delay"
    }

    task "ollama" {
      driver = "docker"

      config {
        image        = var.ollama_image
        network_mode = "host"
      }

      env {
        # Outside the mesh routers reach Ollama directly; in the mesh only through the sidecar.
        OLLAMA_HOST         = var.mesh ? "127.0.0.1:${var.ollama_port}" : "0.0.0.0:${var.ollama_port}"
        OLLAMA_NUM_PARALLEL = "${var.parallel_slots}"
        OLLAMA_KEEP_ALIVE   = "30m"
        OLLAMA_MODELS       = "/models"
      }

      volume_mount {
        volume      = "models"
        destination = "/models"
      }

      # Ollama stops after the sidecar (the leader) has drained and deregistered; the same
      # timeout lets a generation that outlived the drain period still finish.
      kill_signal  = "SIGTERM"
      kill_timeout = "${var.drain_timeout_seconds + 30}s"

      resources {
        cpu    = 4000
        memory = var.ollama_memory_mb

        # Only nodes whose NVIDIA device plugin fingerprinted GPUs can place this task, so the
        # system job runs on GPU nodes and skips the rest.
        device "nvidia/gpu" {
          count = var.gpu_count
        }
      }
    }

    task "ollama-mesh-sidecar" {
      # The leader is stopped first: on a job stop, an update or a node drain the sidecar puts the
      # node in maintenance, waits drain_timeout_seconds, deregisters, and only then is Ollama
      # stopped. And when the sidecar exits (after a preemption notice), Ollama goes with it.
      leader = true
      driver = "docker"

      config {
        image        = var.sidecar_image
        command      = "/usr/local/bin/ollama-mesh-sidecar"
        network_mode = "host"
        # nvidia-smi for the GPU facts, without claiming the GPUs Ollama holds: the NVIDIA
        # runtime mounts the driver's utilities for NVIDIA_VISIBLE_DEVICES=all (the docker
        # plugin must allow it: allow_runtimes = ["runc", "nvidia"]).
        runtime = "nvidia"
      }

      # Settings as an env file, the same variables as examples/systemd/sidecar.env.
      # Optional ones are written only when set: the sidecar rejects an empty value.
      template {
        destination = "local/sidecar.env"
        env         = true
        data        = <<-EOT
          OLLAMA_MESH_OLLAMA_URL=http://127.0.0.1:${var.ollama_port}
          OLLAMA_MESH_PARALLEL_SLOTS=${var.parallel_slots}
          OLLAMA_MESH_DRAIN_TIMEOUT=${var.drain_timeout_seconds}s
          OLLAMA_MESH_PREEMPTIBLE=${var.preemptible}
          OLLAMA_MESH_MESH=${var.mesh}
          OLLAMA_MESH_MESH_LISTEN=0.0.0.0:${var.mesh_port}
          OLLAMA_MESH_METRICS_LISTEN=0.0.0.0:${var.metrics_port}
          OLLAMA_MESH_LOG_FORMAT=json
          %{~ if var.preemption_notice_url != "" }
          OLLAMA_MESH_PREEMPTION_NOTICE_URL=${var.preemption_notice_url}
          %{~ endif }
        EOT
      }

      env {
        # The node's name, not the container's, in the instance ID (ollama-<node>-<port>).
        OLLAMA_MESH_NODE_NAME = "${node.unique.name}"
        # The node's own Consul agent, on the host network.
        CONSUL_HTTP_ADDR = "127.0.0.1:8500"
        # Workload identity (Nomad 1.7+ with `nomad setup consul`): Nomad logs the task in to
        # Consul and writes its token here; docs/operations.md binds it to the sidecar's policy.
        CONSUL_HTTP_TOKEN_FILE     = "${NOMAD_SECRETS_DIR}/consul_token"
        NVIDIA_VISIBLE_DEVICES     = "all"
        NVIDIA_DRIVER_CAPABILITIES = "utility"
      }

      # Asks Nomad for a Consul token for this task (with consul.task_identity on the servers).
      consul {}

      # Nomad's default kill signal is SIGINT; the sidecar drains on either, SIGTERM is explicit.
      # kill_timeout must exceed the drain, or Nomad kills the sidecar before it deregisters
      # (and the client's max_kill_timeout must allow it).
      kill_signal  = "SIGTERM"
      kill_timeout = "${var.drain_timeout_seconds + 15}s"

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
