use std::time::Duration;

use tokio::net::TcpListener;

use super::until_accepting;

#[tokio::test]
async fn readiness_waits_for_the_proxy_listener() {
    // A free port, closed again: nothing listens there yet.
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("0.0.0.0:{port}").parse().unwrap();
    let waiting = tokio::spawn(until_accepting(listen));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "nothing accepts on the port: not ready"
    );

    let _listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("ready once the port accepts (an unspecified address is tried on loopback)")
        .unwrap();
}
