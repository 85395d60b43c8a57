//! What the agent-level native tests share: taking turns (one agent per process), a
//! tracepoint's status, and waiting for something the decoder thread does.

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use sonde_agent::{AgentHandle, TracepointStatus};

/// Held by each test: one agent (and one SIGTRAP handler's table) per process at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The status of tracepoint `id`.
pub fn status(agent: &AgentHandle, id: &str) -> TracepointStatus {
    agent
        .statuses()
        .into_iter()
        .find(|s| s.id == id)
        .expect("status present")
}

/// Waits up to 20 s for `ok`, polling every 10 ms; panics naming `what` otherwise.
pub fn wait_for(what: &str, ok: impl FnMut() -> bool) {
    wait_showing(what, ok, String::new);
}

/// [`wait_for`], with what `state` says at the timeout in the panic message.
pub fn wait_showing(what: &str, mut ok: impl FnMut() -> bool, state: impl Fn() -> String) {
    let started = Instant::now();
    while !ok() {
        if started.elapsed() > Duration::from_secs(20) {
            panic!("timed out waiting for {what}: {}", state());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
