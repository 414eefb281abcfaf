//! The local agent's service endpoints: how a sidecar registers, heartbeats, drains and
//! leaves. Registration always goes through the node's own agent, which runs the checks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{encode_component, go_duration, Client, QueryOptions};
use crate::health::{CheckStatus, HealthCheck};
use crate::Error;

/// How much of the traffic an instance gets when passing and when warning. Consul's default is
/// `{Passing: 1, Warning: 1}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    /// Weight while every check passes.
    pub passing: u32,
    /// Weight while some check warns.
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            passing: 1,
            warning: 1,
        }
    }
}

/// A service definition for `PUT /v1/agent/service/register`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    /// Unique per agent.
    #[serde(rename = "ID")]
    pub id: String,
    /// The service name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Address routers connect to; empty means the node's address.
    pub address: String,
    /// Port routers connect to.
    pub port: u16,
    /// Meta pairs (see [`crate::contract::NodeMeta`]).
    pub meta: BTreeMap<String, String>,
    /// Traffic weights.
    pub weights: Weights,
    /// Checks the agent runs for this service.
    pub checks: Vec<CheckDefinition>,
    /// Connect settings, for Connect-native services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectSettings>,
}

/// Marks a service as speaking Consul Connect mTLS itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConnectSettings {
    /// The service terminates Connect mTLS itself.
    pub native: bool,
}

/// A check for the agent to run. Durations are sent in Go's duration syntax.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDefinition {
    /// Unique per agent; used for TTL updates.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Shown in the Consul UI.
    pub name: String,
    /// What the check watches, for the operator reading the UI.
    pub notes: String,
    /// The kind of check and its parameters.
    #[serde(flatten)]
    pub kind: CheckKind,
    /// Status the check starts in (Consul starts checks critical by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
    /// Remove the service after the check has been critical this long (minimum one minute).
    #[serde(
        rename = "DeregisterCriticalServiceAfter",
        serialize_with = "serialize_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_critical_after: Option<Duration>,
}

/// The kinds of check ollama-mesh uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum CheckKind {
    /// The agent polls a URL: 2xx passing, 429 warning, anything else critical.
    Http {
        /// URL to poll.
        #[serde(rename = "HTTP")]
        url: String,
        /// How often.
        #[serde(rename = "Interval", serialize_with = "serialize_duration")]
        interval: Duration,
        /// How long one poll may take.
        #[serde(rename = "Timeout", serialize_with = "serialize_duration")]
        timeout: Duration,
    },
    /// The registering process reports status itself at least every `ttl`.
    Ttl {
        /// Longest silence before the check goes critical.
        #[serde(rename = "TTL", serialize_with = "serialize_duration")]
        ttl: Duration,
    },
}

fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&go_duration(*d))
}

fn serialize_opt_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serialize_duration(d, s),
        None => s.serialize_none(),
    }
}

/// A service as the local agent reports it (`GET /v1/agent/service/:id`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentService {
    /// Instance ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    #[serde(deserialize_with = "crate::health::null_as_default")]
    pub tags: Vec<String>,
    /// Meta pairs.
    #[serde(deserialize_with = "crate::health::null_as_default")]
    pub meta: BTreeMap<String, String>,
    /// Port.
    pub port: u16,
    /// Address.
    pub address: String,
    /// Weights.
    pub weights: Weights,
    /// Hash of the definition; changes whenever the definition does.
    pub content_hash: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TtlUpdate<'a> {
    status: CheckStatus,
    output: &'a str,
}

impl Client {
    /// Registers (or replaces) a service on the local agent. Check statuses survive a
    /// re-registration; checks no longer in the definition are removed.
    pub async fn register_service(&self, service: &ServiceRegistration) -> Result<(), Error> {
        self.put_json(
            "/v1/agent/service/register?replace-existing-checks=true",
            service,
        )
        .await
    }

    /// Removes a service and its checks from the local agent.
    pub async fn deregister_service(&self, id: &str) -> Result<(), Error> {
        self.put_empty(&format!(
            "/v1/agent/service/deregister/{}",
            encode_component(id)
        ))
        .await
    }

    /// Turns maintenance mode on (with a reason shown in the UI) or off. Maintenance adds a
    /// critical check, so routers stop sending new work; it survives agent restarts.
    pub async fn set_service_maintenance(
        &self,
        id: &str,
        enable: bool,
        reason: &str,
    ) -> Result<(), Error> {
        let path = format!(
            "/v1/agent/service/maintenance/{}?enable={enable}&reason={}",
            encode_component(id),
            encode_component(reason)
        );
        self.put_empty(&path).await
    }

    /// Reports a TTL check's status; `output` is what the UI shows on the instance page.
    pub async fn update_ttl_check(
        &self,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), Error> {
        let path = format!("/v1/agent/check/update/{}", encode_component(check_id));
        self.put_json(&path, &TtlUpdate { status, output }).await
    }

    /// Every check on the local agent, by check ID, as the agent sees it now. Unlike health
    /// results (the catalog), this shows a check's latest output at once: the agent syncs
    /// output-only changes to the catalog lazily (`check_update_interval`, 5 minutes by default).
    pub async fn agent_checks(&self) -> Result<BTreeMap<String, HealthCheck>, Error> {
        Ok(self
            .get_json("/v1/agent/checks", &QueryOptions::default())
            .await?
            .value)
    }

    /// The service as the local agent knows it, or `None` if the agent does not have it (for
    /// example after a restart of a `-dev` agent, which forgets registrations).
    pub async fn agent_service(&self, id: &str) -> Result<Option<AgentService>, Error> {
        let path = format!("/v1/agent/service/{}", encode_component(id));
        Ok(self
            .get_json_optional::<AgentService>(&path, &QueryOptions::default())
            .await?
            .value)
    }
}
