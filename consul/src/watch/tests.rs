//! The watch loop's rules, driven by a scripted fetch on tokio's paused clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http::StatusCode;

use super::*;

type Answer = Result<QueryResponse<u32>, Error>;
type Fetch = std::pin::Pin<Box<dyn Future<Output = Answer> + Send>>;

/// A fetch that answers from a script (then stalls forever) and records the options it got.
fn scripted(
    answers: Vec<Answer>,
) -> (
    Arc<Mutex<Vec<QueryOptions>>>,
    impl FnMut(QueryOptions) -> Fetch + Send + 'static,
) {
    let script: Arc<Mutex<VecDeque<Answer>>> = Arc::new(Mutex::new(answers.into()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let fetch = move |options: QueryOptions| -> Fetch {
        recorded.lock().unwrap().push(options);
        let next = script.lock().unwrap().pop_front();
        Box::pin(async move {
            match next {
                Some(answer) => answer,
                None => std::future::pending().await,
            }
        })
    };
    (seen, fetch)
}

fn ok(value: u32, index: u64) -> Answer {
    Ok(QueryResponse {
        value,
        index,
        known_leader: None,
        last_contact: None,
    })
}

fn status_error(status: StatusCode) -> Answer {
    Err(Error::Status {
        status,
        method: http::Method::GET,
        path: "/v1/test".into(),
        body: String::new(),
    })
}

async fn settle() {
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(start_paused = true)]
async fn first_query_does_not_block_then_blocks_on_the_last_index() {
    let (seen, fetch) = scripted(vec![ok(1, 10), ok(2, 12)]);
    let watch = Watch::spawn("test", WatchConfig::default(), fetch);
    settle().await;
    let indexes: Vec<u64> = seen.lock().unwrap().iter().map(|o| o.index).collect();
    assert_eq!(indexes, [0, 10, 12]);
    assert_eq!(watch.current().as_deref(), Some(&2));
    assert_eq!(watch.status().last_index(), 12);
}

#[tokio::test(start_paused = true)]
async fn index_going_backwards_resets_to_zero() {
    let (seen, fetch) = scripted(vec![ok(1, 100), ok(1, 7), ok(1, 8)]);
    let _watch = Watch::spawn("test", WatchConfig::default(), fetch);
    settle().await;
    let indexes: Vec<u64> = seen.lock().unwrap().iter().map(|o| o.index).collect();
    assert_eq!(indexes, [0, 100, 0, 8]);
}

#[tokio::test(start_paused = true)]
async fn never_blocks_on_index_zero() {
    let (seen, fetch) = scripted(vec![ok(1, 0), ok(1, 0)]);
    let _watch = Watch::spawn("test", WatchConfig::default(), fetch);
    settle().await;
    let indexes: Vec<u64> = seen.lock().unwrap().iter().map(|o| o.index).collect();
    assert_eq!(indexes, [0, 1, 1]);
}

#[tokio::test(start_paused = true)]
async fn unchanged_data_is_not_republished() {
    let (seen, fetch) = scripted(vec![ok(5, 1), ok(5, 2), ok(5, 3), ok(6, 4), ok(6, 5)]);
    let watch = Watch::spawn("test", WatchConfig::default(), fetch);
    let receiver = watch.subscribe();
    settle().await;
    assert_eq!(seen.lock().unwrap().len(), 6, "every answer was read");
    assert_eq!(watch.status().updates(), 2, "only 5 and 6 were published");
    assert_eq!(*receiver.borrow().clone().unwrap(), 6);
}

#[tokio::test(start_paused = true)]
async fn errors_keep_the_last_snapshot_and_back_off() {
    let mut answers = vec![ok(1, 1)];
    answers.extend((0..6).map(|_| status_error(StatusCode::INTERNAL_SERVER_ERROR)));
    answers.push(ok(2, 2));
    let (seen, fetch) = scripted(answers);
    let watch = Watch::spawn("test", WatchConfig::default(), fetch);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(watch.current().as_deref(), Some(&1));
    assert!(!watch.status().is_connected());
    settle().await;
    assert_eq!(watch.current().as_deref(), Some(&2));
    assert_eq!(watch.status().errors(), 6);
    assert!(watch.status().is_connected());
    assert_eq!(seen.lock().unwrap().len(), 9);
}

#[tokio::test(start_paused = true)]
async fn the_query_after_an_error_does_not_block() {
    // The agent restarts between answers: its index starts over below ours.
    let (seen, fetch) = scripted(vec![
        ok(1, 500),
        status_error(StatusCode::SERVICE_UNAVAILABLE),
        ok(2, 12),
        ok(2, 13),
    ]);
    let watch = Watch::spawn("test", WatchConfig::default(), fetch);
    settle().await;
    let indexes: Vec<u64> = seen.lock().unwrap().iter().map(|o| o.index).collect();
    assert_eq!(indexes, [0, 500, 0, 12, 13]);
    assert_eq!(watch.current().as_deref(), Some(&2));
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_exponentially() {
    let answers: Vec<_> = (0..8)
        .map(|_| status_error(StatusCode::INTERNAL_SERVER_ERROR))
        .collect();
    let (seen, fetch) = scripted(answers);
    let _watch = Watch::spawn("test", WatchConfig::default(), fetch);
    tokio::time::sleep(Duration::from_secs(7)).await;
    // Delays are at least 0.125, 0.25, 0.5, 1, 2, 4 s: by 7 s no more than 6 retries happened.
    let calls = seen.lock().unwrap().len();
    assert!((4..=7).contains(&calls), "{calls} calls in 7 s");
}

#[tokio::test(start_paused = true)]
async fn rate_limited_answers_back_off_at_least_a_second() {
    let answers: Vec<_> = (0..20)
        .map(|_| status_error(StatusCode::TOO_MANY_REQUESTS))
        .collect();
    let (seen, fetch) = scripted(answers);
    let _watch = Watch::spawn("test", WatchConfig::default(), fetch);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = seen.lock().unwrap().len();
    // Delays of at least 0.5, 1, 2, 4 s: at most 5 calls in 10 s.
    assert!((2..=5).contains(&calls), "{calls} calls in 10 s");
}

#[tokio::test(start_paused = true)]
async fn churn_is_rate_limited_by_the_token_bucket() {
    let answers: Vec<_> = (1..=1000).map(|i| ok(i, u64::from(i))).collect();
    let (seen, fetch) = scripted(answers);
    let config = WatchConfig {
        burst: 2,
        per_second: 2.0,
        ..WatchConfig::default()
    };
    let _watch = Watch::spawn("test", config, fetch);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = seen.lock().unwrap().len();
    // A burst of 2, then 2 per second: about 22 calls in 10 s, not 1000.
    assert!((20..=23).contains(&calls), "{calls} calls in 10 s");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_watch_stops_querying() {
    let answers: Vec<_> = (1..=1000).map(|i| ok(i, u64::from(i))).collect();
    let (seen, fetch) = scripted(answers);
    let watch = Watch::spawn("test", WatchConfig::default(), fetch);
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(watch);
    let calls = seen.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(seen.lock().unwrap().len(), calls);
}

#[test]
fn index_rules() {
    assert_eq!(next_index(0, 0), 1);
    assert_eq!(next_index(0, 9), 9);
    assert_eq!(next_index(9, 9), 9);
    assert_eq!(next_index(9, 3), 0);
}
