//! No proxy at all: clients talk to the first node. The floor every proxy's overhead is
//! measured against (what a request costs with nothing in between).

use std::time::{Duration, Instant};

use super::{PeerError, PeerKind, PeerSetup, RunningPeer};
use crate::procs;

/// How long the node may take to answer (it is already running, so this only catches a wrong
/// address).
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Checks that the first node answers and returns it as the "peer".
pub(super) async fn start(setup: &PeerSetup) -> Result<RunningPeer, PeerError> {
    let started = Instant::now();
    let url = format!("http://{}", setup.backends[0]);
    procs::wait_http_ok(&format!("{url}/api/version"), &[], READY_WITHIN)
        .await
        .map_err(|source| PeerError::NotReady {
            peer: PeerKind::Direct,
            source,
            log_tail: String::new(),
        })?;
    Ok(RunningPeer {
        kind: PeerKind::Direct,
        config: format!("no proxy: clients connect straight to the first node, {url}\n"),
        url,
        version: "no proxy".to_owned(),
        bearer: None,
        startup: started.elapsed(),
        proc: None,
    })
}
