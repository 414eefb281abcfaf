//! How an instance's checks, weights, maintenance and drain flag decide whether it gets new work.
//!
//! Routers watch the health endpoint without `?passing` (which would hide warning instances)
//! and apply these rules to every instance themselves:
//!
//! 1. a maintenance check (`_service_maintenance:<id>` or `_node_maintenance`) or a drain key in KV
//!    → **draining**: no new requests, running ones finish;
//! 2. any other critical check (including the node's `serfHealth`) → **out**;
//! 3. any warning check → **active** at `Weights.Warning`;
//! 4. otherwise **active** at `Weights.Passing`.
//!
//! Weight 0 means "no new work" in every state.

use crate::agent::Weights;
use crate::health::{CheckStatus, HealthCheck};

/// Check IDs Consul gives maintenance mode.
const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";
const NODE_MAINTENANCE: &str = "_node_maintenance";

/// Whether, and how much, an instance should be sent new requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingState {
    /// Takes new requests in proportion to `weight` (0 = none).
    Active {
        /// Relative share of new requests.
        weight: u32,
        /// `true` when a check is warning and `Weights.Warning` applies.
        degraded: bool,
    },
    /// Finishing what it has; takes nothing new.
    Draining {
        /// Why, as an operator wrote it (maintenance reason or drain key value).
        reason: String,
    },
    /// Down or failing; takes nothing.
    Out {
        /// The failing check and its output.
        reason: String,
    },
}

impl RoutingState {
    /// Whether a router may send this instance a new request.
    pub fn accepts_new_work(&self) -> bool {
        matches!(self, Self::Active { weight, .. } if *weight > 0)
    }

    /// The instance's share of new requests (0 unless active).
    pub fn weight(&self) -> u32 {
        match self {
            Self::Active { weight, .. } => *weight,
            Self::Draining { .. } | Self::Out { .. } => 0,
        }
    }
}

/// Applies the rules above to one instance. `drain_reason` is the value of its drain key, if
/// the key exists.
pub fn routing_state(
    checks: &[HealthCheck],
    weights: Weights,
    drain_reason: Option<&str>,
) -> RoutingState {
    if let Some(check) = checks.iter().find(|c| is_maintenance(c)) {
        return RoutingState::Draining {
            reason: first_non_empty(&[&check.notes, &check.output, "maintenance mode"]),
        };
    }
    if let Some(reason) = drain_reason {
        return RoutingState::Draining {
            reason: first_non_empty(&[reason, "drained through Consul KV"]),
        };
    }
    if let Some(check) = checks.iter().find(|c| c.status == CheckStatus::Critical) {
        return RoutingState::Out {
            reason: format!(
                "check {:?} is critical: {}",
                check.name,
                check.output.trim()
            ),
        };
    }
    if checks.iter().any(|c| c.status == CheckStatus::Warning) {
        return RoutingState::Active {
            weight: weights.warning,
            degraded: true,
        };
    }
    RoutingState::Active {
        weight: weights.passing,
        degraded: false,
    }
}

fn is_maintenance(check: &HealthCheck) -> bool {
    check.check_id.starts_with(SERVICE_MAINTENANCE_PREFIX) || check.check_id == NODE_MAINTENANCE
}

fn first_non_empty(candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|s| s.trim())
        .find(|s| !s.is_empty())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests;
