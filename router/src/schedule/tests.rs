//! The scheduler on a virtual clock (tokio's paused time): no sleeps, no network.

use std::sync::Arc;
use std::time::Duration;

use ollama_mesh_consul::contract::meta::canonical_model_name;
use tokio::task::JoinHandle;

use super::*;
use crate::testing::{instance, set, Instance, TestFleet};

const MODEL: &str = "llama3.2:3b";

fn scheduler(policy: Policy, instances: &[Instance]) -> (Arc<Scheduler>, Arc<TestFleet>) {
    scheduler_with(
        ScheduleSettings {
            policy,
            ..ScheduleSettings::default()
        },
        instances,
    )
}

fn scheduler_with(
    settings: ScheduleSettings,
    instances: &[Instance],
) -> (Arc<Scheduler>, Arc<TestFleet>) {
    let fleet = TestFleet::new(set(instances));
    (Scheduler::seeded(fleet.clone(), settings, 7), fleet)
}

/// A request to run `model` with nothing else known.
fn run(model: &str) -> Ask {
    Ask {
        model: Some(model.to_owned()),
        residency: Some(Residency {
            model: canonical_model_name(model),
            runner: 0,
        }),
        ..Ask::default()
    }
}

fn ask() -> Ask {
    run(MODEL)
}

/// A node with the model on disk and `slots` slots, `loaded` or not.
fn node(id: &str, loaded: bool, slots: u32) -> Instance {
    let node = instance(id)
        .on_disk(&[MODEL, "other:7b"])
        .capacity(1, slots);
    if loaded {
        node.loaded(&[MODEL])
    } else {
        node
    }
}

async fn now(scheduler: &Arc<Scheduler>, ask: Ask) -> Permit {
    scheduler.acquire(ask, &[]).await.expect("a permit")
}

fn id(permit: &Permit) -> &str {
    permit.backend().id()
}

/// Starts `ask` in the background and lets it reach the queue.
async fn waiting(
    scheduler: &Arc<Scheduler>,
    ask: Ask,
) -> JoinHandle<Result<Permit, ScheduleError>> {
    let scheduler = scheduler.clone();
    let task = tokio::spawn(async move { scheduler.acquire(ask, &[]).await });
    settle().await;
    task
}

/// Lets spawned tasks run up to their next wait.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn least_outstanding_never_holds_a_request() {
    let (scheduler, _) = scheduler(Policy::LeastOutstanding, &[node("a", true, 1)]);
    let held: Vec<Permit> =
        futures_util::future::join_all((0..5).map(|_| now(&scheduler, ask()))).await;
    assert_eq!(held.len(), 5);
    assert_eq!(scheduler.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn beyond_its_slots_a_request_waits_and_takes_the_first_freed_slot() {
    let (scheduler, fleet) = scheduler(Policy::Queue, &[node("a", true, 2)]);
    let first = now(&scheduler, ask()).await;
    let _second = now(&scheduler, ask()).await;
    let third = waiting(&scheduler, ask()).await;
    assert_eq!(scheduler.queued(), 1);
    assert!(!third.is_finished());
    assert_eq!(fleet.backends().get("a").unwrap().in_flight().get(), 2);
    drop(first);
    let third = third.await.unwrap().expect("the freed slot");
    assert_eq!(id(&third), "a");
    assert_eq!(scheduler.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_is_bound_late_to_whichever_node_frees_first() {
    let (scheduler, _) = scheduler(Policy::Queue, &[node("a", true, 1), node("b", true, 1)]);
    let on_a = now(&scheduler, ask()).await;
    let on_b = now(&scheduler, ask()).await;
    let (a, b) = if id(&on_a) == "a" {
        (on_a, on_b)
    } else {
        (on_b, on_a)
    };
    let waiter = waiting(&scheduler, ask()).await;
    drop(b);
    assert_eq!(id(&waiter.await.unwrap().unwrap()), "b");
    drop(a);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_hangs_up_leaves_the_queue_at_once() {
    let (scheduler, fleet) = scheduler(Policy::Queue, &[node("a", true, 1)]);
    let held = now(&scheduler, ask()).await;
    let gone = waiting(&scheduler, ask()).await;
    let stays = waiting(&scheduler, ask()).await;
    assert_eq!(scheduler.queued(), 2);
    gone.abort();
    settle().await;
    assert_eq!(scheduler.queued(), 1);
    drop(held);
    let next = stays
        .await
        .unwrap()
        .expect("the slot goes to the one still waiting");
    assert_eq!(id(&next), "a");
    assert_eq!(fleet.backends().get("a").unwrap().in_flight().get(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_bounded_in_length_and_in_time() {
    let settings = ScheduleSettings {
        policy: Policy::Queue,
        queue_max: 1,
        queue_timeout: Duration::from_secs(30),
        retries: 2,
    };
    let (scheduler, _) = scheduler_with(settings, &[node("a", true, 1)]);
    let _held = now(&scheduler, ask()).await;
    let waits = waiting(&scheduler, ask()).await;
    let refused = scheduler.acquire(ask(), &[]).await.unwrap_err();
    assert!(
        matches!(refused, ScheduleError::QueueFull { queued: 1, .. }),
        "{refused}"
    );
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(3)));
    let timed_out = waits.await.unwrap().unwrap_err();
    assert!(
        matches!(timed_out, ScheduleError::QueueTimeout { .. }),
        "{timed_out}"
    );
    assert_eq!(scheduler.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn critical_work_goes_first_and_sheddable_work_is_shed_first() {
    let settings = ScheduleSettings {
        policy: Policy::Queue,
        queue_max: 2,
        ..ScheduleSettings::default()
    };
    let (scheduler, _) = scheduler_with(settings, &[node("a", true, 1)]);
    let with = |priority| Ask { priority, ..ask() };
    let held = now(&scheduler, ask()).await;
    let batch = waiting(&scheduler, with(Priority::Sheddable)).await;
    let standard = waiting(&scheduler, with(Priority::Standard)).await;
    // The queue is full: a critical request takes the sheddable one's place.
    let critical = waiting(&scheduler, with(Priority::Critical)).await;
    let shed = batch.await.unwrap().unwrap_err();
    assert!(matches!(shed, ScheduleError::Shed { .. }), "{shed}");
    drop(held);
    settle().await;
    assert!(critical.is_finished(), "critical first");
    assert!(!standard.is_finished());
    drop(critical.await.unwrap().unwrap());
    assert!(standard.await.unwrap().is_ok());
    // Nothing less important to shed: the newcomer is refused.
    let _held = now(&scheduler, ask()).await;
    let _one = waiting(&scheduler, with(Priority::Critical)).await;
    let _two = waiting(&scheduler, with(Priority::Critical)).await;
    let refused = scheduler
        .acquire(with(Priority::Critical), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ScheduleError::QueueFull { .. }),
        "{refused}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_flooding_the_router_does_not_starve_another() {
    let (scheduler, _) = scheduler(Policy::Queue, &[node("a", true, 1)]);
    let from = |key: &str| Ask {
        key: Some(key.into()),
        ..ask()
    };
    let mut held = now(&scheduler, from("flood")).await;
    let mut flood = Vec::new();
    for _ in 0..5 {
        flood.push(waiting(&scheduler, from("flood")).await);
    }
    let quiet = waiting(&scheduler, from("quiet")).await;
    // The quiet key's one request goes before the flood's earlier ones.
    drop(held);
    settle().await;
    assert!(quiet.is_finished(), "the quiet key waited behind the flood");
    held = quiet.await.unwrap().unwrap();
    drop(held);
    for task in flood {
        drop(task.await.unwrap().unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn a_rare_model_stays_on_its_warm_node_rather_than_loading_elsewhere() {
    let (scheduler, _) = scheduler(
        Policy::Residency,
        &[node("warm", true, 1), node("cold", false, 1)],
    );
    let first = now(&scheduler, ask()).await;
    assert_eq!(id(&first), "warm");
    // The warm node frees within a service time, sooner than a load on the cold one.
    let second = waiting(&scheduler, ask()).await;
    assert_eq!(scheduler.queued(), 1);
    drop(first);
    assert_eq!(id(&second.await.unwrap().unwrap()), "warm");
}

#[tokio::test(start_paused = true)]
async fn a_busy_model_scales_out_when_its_queue_costs_more_than_a_load() {
    let (scheduler, _) = scheduler(
        Policy::Residency,
        &[node("warm", true, 1), node("cold", false, 1)],
    );
    let _first = now(&scheduler, ask()).await;
    let mut waiters = Vec::new();
    let mut scaled_out = None;
    for _ in 0..6 {
        let task = waiting(&scheduler, ask()).await;
        if task.is_finished() {
            scaled_out = Some(task.await.unwrap().unwrap());
            break;
        }
        waiters.push(task);
    }
    let scaled_out = scaled_out.expect("the queue never scaled out");
    assert_eq!(id(&scaled_out), "cold");
    // Defaults: 5 s a request, 10 s a load. The first waiter expects the warm slot in 5 s and
    // waits; the next would wait 10 s, as long as a load: it loads the model on the cold node.
    assert_eq!(
        waiters.len(),
        1,
        "scaled out after {} waited",
        waiters.len()
    );
    // The cold node now has the model: the router knows before Meta says so.
    let report = scheduler.report(scaled_out.backend());
    assert!(report.iter().any(|m| m.model == MODEL && m.resident));
}

#[tokio::test(start_paused = true)]
async fn another_runner_option_is_a_load_even_where_the_model_is_warm() {
    let (scheduler, _) = scheduler(
        Policy::Residency,
        &[node("warm", true, 2), node("cold", false, 2)],
    );
    let _warm = now(&scheduler, ask()).await;
    let bigger_context = Ask {
        residency: Some(Residency {
            model: MODEL.into(),
            runner: 42,
        }),
        ..ask()
    };
    // The warm node would reload under a running request; the idle cold node loads at once.
    assert_eq!(id(&now(&scheduler, bigger_context).await), "cold");
}

#[tokio::test(start_paused = true)]
async fn a_conversation_returns_to_its_node_until_that_node_is_saturated() {
    let (scheduler, _) = scheduler(Policy::Affinity, &[node("a", true, 2), node("b", true, 2)]);
    let turn = |prompt_tokens| Ask {
        affinity: Some(99),
        prompt_tokens,
        fresh_tokens: 20,
        ..ask()
    };
    let first = now(&scheduler, turn(4_000)).await;
    let home = id(&first).to_owned();
    drop(first);
    // A long conversation: reading it again elsewhere costs seconds, so it goes home.
    for _ in 0..10 {
        assert_eq!(id(&now(&scheduler, turn(4_000)).await), home);
    }
    // Home is full and will stay so longer than the prefix takes to read elsewhere.
    let _busy: Vec<Permit> = vec![
        now(&scheduler, turn(4_000)).await,
        now(&scheduler, turn(4_000)).await,
    ];
    let away = now(&scheduler, turn(4_000)).await;
    assert_ne!(
        id(&away),
        home,
        "a saturated home must not hold the conversation"
    );
}

#[tokio::test(start_paused = true)]
async fn first_turns_spread_by_load() {
    let (scheduler, _) = scheduler(Policy::Affinity, &[node("a", true, 8), node("b", true, 8)]);
    let mut held = Vec::new();
    for conversation in 0..8 {
        held.push(
            now(
                &scheduler,
                Ask {
                    affinity: Some(conversation),
                    prompt_tokens: 50,
                    fresh_tokens: 50,
                    ..ask()
                },
            )
            .await,
        );
    }
    let on_a = held.iter().filter(|p| id(p) == "a").count();
    assert_eq!(on_a, 4, "8 new conversations on 2 idle nodes: {on_a} on a");
}

#[tokio::test(start_paused = true)]
async fn learned_load_times_decide_when_to_scale_out() {
    let (scheduler, _) = scheduler(
        Policy::Learned,
        &[node("warm", true, 1), node("cold", false, 1)],
    );
    // The fleet has learned that this model loads in 0.2 s and answers in 20 s.
    let mut first = now(&scheduler, ask()).await;
    first.record(Outcome {
        answered: true,
        node_failed: false,
        timings: Some(Timings {
            load: Duration::from_millis(300),
            ..Timings::default()
        }),
    });
    tokio::time::advance(Duration::from_secs(20)).await;
    drop(first);
    let _warm = now(&scheduler, ask()).await;
    // Waiting ~20 s at the warm node costs more than a 0.3 s load: the next goes cold.
    let next = now(&scheduler, ask()).await;
    assert_eq!(id(&next), "cold");
    let report = scheduler.report(next.backend());
    assert!(report.iter().any(|m| m.model == MODEL && m.resident));
}

#[tokio::test(start_paused = true)]
async fn slots_and_memory_survive_a_backend_set_rebuild() {
    let (scheduler, fleet) = scheduler(Policy::Queue, &[node("a", true, 1)]);
    let held = now(&scheduler, ask()).await;
    fleet.rebuild(&[node("a", true, 1), node("b", false, 1)]);
    // `a` is still full after the rebuild; the newcomer takes `b`.
    assert_eq!(id(&now(&scheduler, ask()).await), "b");
    assert_eq!(fleet.backends().get("a").unwrap().in_flight().get(), 1);
    drop(held);
    assert_eq!(fleet.backends().get("a").unwrap().in_flight().get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_naming_no_model_is_never_held() {
    let (scheduler, _) = scheduler(Policy::Learned, &[node("a", true, 1)]);
    let held: Vec<Permit> =
        futures_util::future::join_all((0..3).map(|_| now(&scheduler, Ask::default()))).await;
    assert_eq!(held.len(), 3);
    assert_eq!(scheduler.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_missing_model_or_an_empty_fleet_is_answered_at_once() {
    let (one, _) = scheduler(Policy::Learned, &[node("a", true, 1)]);
    let missing = one.acquire(run("phi4"), &[]).await.unwrap_err();
    assert!(matches!(missing, ScheduleError::ModelNotFound { .. }));
    assert_eq!(missing.status(), 404);
    let (empty, _) = scheduler(Policy::Learned, &[]);
    assert_eq!(
        empty.acquire(ask(), &[]).await.unwrap_err(),
        ScheduleError::NoneAvailable
    );
}

#[test]
fn policies_are_named_for_the_flag() {
    for policy in Policy::ALL {
        assert_eq!(policy.name().parse::<Policy>(), Ok(policy));
    }
    assert_eq!(Policy::default(), Policy::Learned);
    assert!("fastest".parse::<Policy>().is_err());
    assert_eq!("Critical".parse::<Priority>(), Ok(Priority::Critical));
    assert!("urgent".parse::<Priority>().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_node_that_fails_is_avoided_for_a_backoff_that_grows() {
    for policy in Policy::ALL {
        let (scheduler, _) = scheduler(policy, &[node("a", true, 4), node("b", true, 4)]);
        let fail_on = |node: &'static str| {
            let scheduler = scheduler.clone();
            async move {
                loop {
                    let mut permit = now(&scheduler, ask()).await;
                    if id(&permit) == node {
                        permit.node_failed();
                        return;
                    }
                }
            }
        };
        fail_on("a").await;
        for _ in 0..20 {
            assert_eq!(id(&now(&scheduler, ask()).await), "b", "{policy}");
        }
        // After the first backoff a is tried again; failing again avoids it twice as long.
        tokio::time::advance(Duration::from_millis(1_100)).await;
        fail_on("a").await;
        tokio::time::advance(Duration::from_millis(1_100)).await;
        assert_eq!(id(&now(&scheduler, ask()).await), "b", "{policy}");
        tokio::time::advance(Duration::from_secs(1)).await;
        let back = (0..50).any(|_| {
            futures_util::FutureExt::now_or_never(now(&scheduler, ask()))
                .is_some_and(|p| id(&p) == "a")
        });
        assert!(back, "{policy}: a never came back");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_node_is_still_used_when_it_is_the_only_one() {
    let (scheduler, _) = scheduler(Policy::Learned, &[node("a", true, 1)]);
    now(&scheduler, ask()).await.node_failed();
    assert_eq!(id(&now(&scheduler, ask()).await), "a");
}

#[tokio::test(start_paused = true)]
async fn a_conversation_does_not_follow_its_prefix_to_a_node_that_lost_the_model() {
    let (scheduler, fleet) =
        scheduler(Policy::Affinity, &[node("a", false, 1), node("b", true, 1)]);
    // A long conversation: re-reading it elsewhere takes 20 s, more than a 10 s load.
    let turn = Ask {
        affinity: Some(7),
        prompt_tokens: 20_000,
        fresh_tokens: 20,
        ..ask()
    };
    let first = now(&scheduler, turn.clone()).await;
    assert_eq!(id(&first), "b");
    drop(first);
    // Later b has unloaded the model (Meta says so, long after the router sent it there) and a
    // has it: the prefix cache went with b's runner, so the next turn is not worth a load there.
    tokio::time::advance(memory::META_LAG + Duration::from_secs(1)).await;
    fleet.rebuild(&[node("a", true, 1), node("b", false, 1)]);
    assert_eq!(id(&now(&scheduler, turn).await), "a");
}

/// Records the loads ahead of need a scheduler orders.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(String, String)>>);

impl Preloader for Recorder {
    fn preload(&self, _scheduler: Arc<Scheduler>, order: Preload) {
        self.0
            .lock()
            .unwrap()
            .push((order.backend.id().to_string(), order.model));
    }
}

impl Recorder {
    fn orders(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap().clone()
    }
}

fn preloading(instances: &[Instance]) -> (Arc<Scheduler>, Arc<Recorder>) {
    let (scheduler, _) = scheduler(Policy::Preload, instances);
    let recorder = Arc::new(Recorder::default());
    scheduler.set_preloader(recorder.clone());
    (scheduler, recorder)
}

#[tokio::test(start_paused = true)]
async fn a_growing_queue_loads_the_model_on_a_cold_node_before_scaling_out_pays() {
    let (scheduler, recorder) = preloading(&[node("warm", true, 1), node("cold", false, 1)]);
    let _running = now(&scheduler, ask()).await;
    // Defaults: 5 s a request, 10 s a load. The first waiter expects the warm slot in 5 s:
    // half a load's cost, over the two fifths at which the cold node starts loading while the
    // request waits.
    let first = waiting(&scheduler, ask()).await;
    assert!(
        !first.is_finished(),
        "waiting at the warm node is still cheaper"
    );
    assert_eq!(recorder.orders(), [("cold".to_owned(), MODEL.to_owned())]);
    let cold = scheduler.fleet.backends().get("cold").unwrap().clone();
    assert!(
        scheduler
            .report(&cold)
            .iter()
            .any(|m| m.model == MODEL && m.resident),
        "the loading node counts as resident"
    );
    // The next waiter would wait 10 s at the warm node: the cold one, loading for the last
    // 4 s, is cheaper, and no second load is ordered.
    tokio::time::advance(Duration::from_secs(6)).await;
    let second = waiting(&scheduler, ask()).await;
    let second = second.await.unwrap().expect("a permit on the loading node");
    assert_eq!(id(&second), "cold");
    assert_eq!(
        recorder.orders().len(),
        1,
        "one load ahead per model at a time"
    );
    // The load's answer teaches the node's load time.
    scheduler.preloaded(cold.id(), MODEL, Some(Duration::from_secs(3)));
    let report = scheduler.report(&cold);
    let learned = report.iter().find(|m| m.model == MODEL).unwrap();
    assert_eq!(learned.learned.load_seconds, Some(3.0));
    drop(first);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_loaded_ahead_for_other_runner_options_or_without_the_policy() {
    let (preload, recorder) = preloading(&[node("warm", true, 1), node("cold", false, 1)]);
    let bigger_context = || Ask {
        residency: Some(Residency {
            model: MODEL.into(),
            runner: 42,
        }),
        ..ask()
    };
    let _running = now(&preload, bigger_context()).await;
    let _waiter = waiting(&preload, bigger_context()).await;
    assert!(recorder.orders().is_empty(), "{:?}", recorder.orders());

    let (learned, _) = scheduler(
        Policy::Learned,
        &[node("warm", true, 1), node("cold", false, 1)],
    );
    let recorder = Arc::new(Recorder::default());
    learned.set_preloader(recorder.clone());
    let _running = now(&learned, ask()).await;
    let _waiter = waiting(&learned, ask()).await;
    assert!(recorder.orders().is_empty(), "learned does not load ahead");
}

#[tokio::test(start_paused = true)]
async fn a_failed_load_ahead_leaves_the_node_cold_again() {
    let (scheduler, recorder) = preloading(&[node("warm", true, 1), node("cold", false, 1)]);
    let _running = now(&scheduler, ask()).await;
    let _waiter = waiting(&scheduler, ask()).await;
    assert_eq!(recorder.orders().len(), 1);
    let cold = scheduler.fleet.backends().get("cold").unwrap().clone();
    scheduler.preloaded(cold.id(), MODEL, None);
    assert!(
        !scheduler
            .report(&cold)
            .iter()
            .any(|m| m.model == MODEL && m.resident),
        "a failed load is not trusted"
    );
    assert_eq!(
        recorder.orders().len(),
        1,
        "nor asked of that node again at once"
    );
}

#[tokio::test(start_paused = true)]
async fn at_most_half_the_candidates_are_ejected_at_once() {
    let (scheduler, _) = scheduler(
        Policy::Learned,
        &[node("a", true, 4), node("b", true, 4), node("c", true, 4)],
    );
    // a fails first, then b: only one of three may be out, and the first ejected returns first.
    for failing in ["a", "b"] {
        loop {
            let mut permit = now(&scheduler, ask()).await;
            if id(&permit) == failing {
                permit.node_failed();
                break;
            }
        }
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..60 {
        seen.insert(id(&now(&scheduler, ask()).await).to_owned());
    }
    assert!(seen.contains("c"), "{seen:?}");
    assert_eq!(seen.len(), 2, "two of three in rotation: {seen:?}");
    assert!(
        !seen.contains("b"),
        "the latest ejected stays out: {seen:?}"
    );
}
