//! Latency faults and the virtual time a request takes under them, for tests on tokio's
//! paused clock (the fault-parity section of `ews.rs` says why that time is exactly the
//! latency the emulator added).

use std::time::Duration;

use m365_emulator::FaultSettings;

/// Runs `request` and returns its outcome with the virtual time it took.
pub async fn timed<T>(request: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = tokio::time::Instant::now();
    let outcome = request.await;
    (outcome, started.elapsed())
}

/// Faults adding `latency_ms` plus up to `latency_jitter_ms` to every request, and nothing else.
pub fn latency(latency_ms: u64, latency_jitter_ms: u64) -> FaultSettings {
    FaultSettings {
        latency_ms,
        latency_jitter_ms,
        ..FaultSettings::default()
    }
}
