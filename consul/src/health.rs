//! `/v1/health/service/:name`: every instance of a service with its node, its definition
//! (Meta, Weights, Tags) and all its checks, so callers can apply the contract's routing rules
//! themselves instead of trusting `?passing` (which hides warning instances).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::agent::{ConnectSettings, Weights};
use crate::client::{encode_component, Client, QueryOptions, QueryResponse};
use crate::Error;

/// A check's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Healthy.
    Passing,
    /// Degraded: routers apply `Weights.Warning`.
    Warning,
    /// Failing (also the status of maintenance checks).
    #[default]
    Critical,
    /// Consul reports this for checks it has not run yet.
    #[serde(other)]
    Unknown,
}

/// One check on an instance or its node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    /// Check ID (`serfHealth`, `_service_maintenance:<id>`, or a sidecar's own).
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Display name.
    pub name: String,
    /// Status.
    pub status: CheckStatus,
    /// What the check watches.
    pub notes: String,
    /// Last output.
    pub output: String,
    /// The service it belongs to; empty for node checks.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
}

/// The node an instance runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    /// Node name.
    pub node: String,
    /// Node address; instances with no address of their own are reached here.
    pub address: String,
    /// Datacenter.
    pub datacenter: String,
    /// Node Meta.
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
}

/// An instance's definition as the catalog holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CatalogService {
    /// Instance ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// Address; empty means the node's.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Meta pairs.
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    /// Weights.
    pub weights: Weights,
    /// Connect settings.
    #[serde(deserialize_with = "null_as_default")]
    pub connect: ConnectSettings,
}

/// One instance with everything needed to decide whether to route to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceEntry {
    /// The node.
    pub node: Node,
    /// The instance.
    pub service: CatalogService,
    /// Node and service checks.
    #[serde(deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// Where to connect: the instance's address, or its node's when it has none.
    pub fn address(&self) -> &str {
        if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        }
    }
}

/// Consul writes `null` for empty lists and maps; read it as empty.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Client {
    /// Every instance of `service` with its checks. A blocking query when `options.index` is set.
    pub async fn health_service(
        &self,
        service: &str,
        options: &QueryOptions,
    ) -> Result<QueryResponse<Vec<ServiceEntry>>, Error> {
        let path = format!("/v1/health/service/{}", encode_component(service));
        self.get_json(&path, options).await
    }

    /// Every Connect-capable instance of `service` (Connect-native or behind a proxy).
    pub async fn health_connect(
        &self,
        service: &str,
        options: &QueryOptions,
    ) -> Result<QueryResponse<Vec<ServiceEntry>>, Error> {
        let path = format!("/v1/health/connect/{}", encode_component(service));
        self.get_json(&path, options).await
    }
}
