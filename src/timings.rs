//! `SAFE_PRUNE_TIMINGS=1`: the wall time of each phase of a run, printed as one JSON line on
//! stderr at the end (`{"scan_ms": 12.3, "map_ms": 0.4, "plan_ms": 8.1, "remove_ms": 950.2,
//! "total_ms": 975.0}`). For `scripts/bench`; not a stable interface.

use std::sync::Mutex;
use std::time::Instant;

/// Phase name and accumulated milliseconds, in first-seen order.
static PHASES: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

fn enabled() -> bool {
    std::env::var_os("SAFE_PRUNE_TIMINGS").is_some_and(|v| v == "1")
}

/// Run `f`, adding its wall time to phase `name` (a phase run twice is summed).
pub fn phase<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let mut phases = PHASES.lock().unwrap_or_else(|p| p.into_inner());
    match phases.iter_mut().find(|(n, _)| *n == name) {
        Some((_, total)) => *total += ms,
        None => phases.push((name, ms)),
    }
    out
}

/// Print the phases and the time since `start`, when enabled.
pub fn print(start: Instant) {
    if !enabled() {
        return;
    }
    let mut map = serde_json::Map::new();
    for (name, ms) in PHASES.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        map.insert(format!("{name}_ms"), round(*ms).into());
    }
    map.insert("total_ms".into(), round(start.elapsed().as_secs_f64() * 1e3).into());
    eprintln!("{}", serde_json::Value::Object(map));
}

fn round(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}
