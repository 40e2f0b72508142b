//! Durations as PMM prints them in generated files.

use std::time::Duration;

/// PMM's scrape timeout: 1s up to a 2s interval, else 90% of it.
pub fn timeout(interval: Duration) -> Duration {
    if interval <= Duration::from_secs(2) {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(interval.as_millis() as u64 * 9 / 10)
    }
}

/// The single largest unit that divides the value exactly: `1h`, `1m`, `54s`, `4500ms`
/// (Prometheus' model.Duration, not its compound `4s500ms`).
pub fn prom_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".to_owned();
    }
    for (unit, size) in [
        ("w", 604_800_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Go's `time.Duration.String()` for whole seconds: `5s`, `10s`, `1m0s`, `1h30m0s`.
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{sec}s"),
        (0, _) => format!("{m}m{sec}s"),
        _ => format!("{h}h{m}m{sec}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_pmm_prints_them() {
        let s = Duration::from_secs;
        assert_eq!(prom_duration(s(5)), "5s");
        assert_eq!(prom_duration(s(60)), "1m");
        assert_eq!(prom_duration(s(90)), "90s");
        assert_eq!(prom_duration(s(3600)), "1h");
        assert_eq!(prom_duration(timeout(s(5))), "4500ms");
        assert_eq!(prom_duration(timeout(s(10))), "9s");
        assert_eq!(prom_duration(timeout(s(60))), "54s");
        assert_eq!(prom_duration(timeout(s(2))), "1s");
        assert_eq!(prom_duration(timeout(s(3))), "2700ms");
        assert_eq!(go_duration(s(10)), "10s");
        assert_eq!(go_duration(s(60)), "1m0s");
        assert_eq!(go_duration(s(5400)), "1h30m0s");
    }
}
