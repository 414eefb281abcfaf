use super::*;

const WEIGHTS: Weights = Weights {
    passing: 10,
    warning: 1,
};

fn check(id: &str, status: CheckStatus) -> HealthCheck {
    HealthCheck {
        check_id: id.into(),
        name: id.into(),
        status,
        output: format!("{id} output"),
        ..HealthCheck::default()
    }
}

#[test]
fn passing_uses_passing_weight() {
    let checks = [
        check("serfHealth", CheckStatus::Passing),
        check("ttl", CheckStatus::Passing),
    ];
    assert_eq!(
        routing_state(&checks, WEIGHTS, None),
        RoutingState::Active {
            weight: 10,
            degraded: false
        }
    );
}

#[test]
fn any_warning_uses_warning_weight() {
    let checks = [
        check("serfHealth", CheckStatus::Passing),
        check("ttl", CheckStatus::Warning),
    ];
    let state = routing_state(&checks, WEIGHTS, None);
    assert_eq!(
        state,
        RoutingState::Active {
            weight: 1,
            degraded: true
        }
    );
    assert!(state.accepts_new_work());
}

#[test]
fn any_critical_takes_it_out() {
    let checks = [
        check("serfHealth", CheckStatus::Critical),
        check("ttl", CheckStatus::Warning),
    ];
    let state = routing_state(&checks, WEIGHTS, None);
    assert!(matches!(&state, RoutingState::Out { reason } if reason.contains("serfHealth")));
    assert!(!state.accepts_new_work());
    assert_eq!(state.weight(), 0);
}

#[test]
fn maintenance_drains_with_the_operator_reason() {
    let mut maintenance = check("_service_maintenance:ollama-a-1", CheckStatus::Critical);
    maintenance.notes = "kernel upgrade".into();
    let checks = [check("serfHealth", CheckStatus::Passing), maintenance];
    assert_eq!(
        routing_state(&checks, WEIGHTS, None),
        RoutingState::Draining {
            reason: "kernel upgrade".into()
        }
    );
    let node = [check("_node_maintenance", CheckStatus::Critical)];
    assert!(matches!(
        routing_state(&node, WEIGHTS, None),
        RoutingState::Draining { .. }
    ));
}

#[test]
fn drain_key_drains_even_a_healthy_instance() {
    let checks = [check("serfHealth", CheckStatus::Passing)];
    assert_eq!(
        routing_state(&checks, WEIGHTS, Some("swap GPU")),
        RoutingState::Draining {
            reason: "swap GPU".into()
        }
    );
    assert_eq!(
        routing_state(&checks, WEIGHTS, Some("")),
        RoutingState::Draining {
            reason: "drained through Consul KV".into()
        }
    );
}

#[test]
fn zero_weight_means_no_new_work() {
    let weights = Weights {
        passing: 0,
        warning: 0,
    };
    let state = routing_state(&[], weights, None);
    assert!(matches!(state, RoutingState::Active { weight: 0, .. }));
    assert!(!state.accepts_new_work());
}
