//! [`register_process_metrics`]: the process's CPU time, memory, open file descriptors, threads
//! and start time, as callback gauges read from `/proc/self` whenever metrics are collected.
//!
//! Why not the `prometheus` crate's `process` feature: its collector goes straight into one
//! `prometheus::Registry`, past the providers (StatsD or OpenTelemetry would not see it), and it
//! brings `procfs`, `rustix` and `libc` for what is a handful of text files. Reading them here
//! takes no dependency and no `unsafe`. The cost of that choice: CPU times in `/proc/self/stat`
//! are in clock ticks, and without `sysconf` this module takes the tick rate to be 100 Hz, the
//! `USER_HZ` of every mainstream Linux architecture (x86, ARM, RISC-V, POWER, s390; not Alpha).
//!
//! On other systems nothing is registered.

use crate::metrics::Metrics;

/// Registers the process metrics into `metrics`, read from `/proc/self` at each collection.
/// Returns how many were registered: 0 off Linux (where nothing is registered), or where `/proc`
/// cannot be read.
///
/// The names are the Prometheus client libraries' standard ones, so existing dashboards work:
///
/// | name | what |
/// | --- | --- |
/// | `process_cpu_seconds_total` | user and system CPU time, seconds (monotonic; a callback gauge, so `rate()` it) |
/// | `process_resident_memory_bytes` | resident set size |
/// | `process_virtual_memory_bytes` | virtual memory size |
/// | `process_open_fds` | open file descriptors |
/// | `process_max_fds` | the soft limit on open file descriptors |
/// | `process_threads` | OS threads |
/// | `process_start_time_seconds` | start time, seconds since the Unix epoch |
///
/// They go through [`Metrics::gauge_fn`], so every backend with callback gauges gets them, and the
/// `Metrics`' namespace and global tags apply (use a `Metrics` without a namespace for the
/// standard names). CPU time takes the kernel's clock tick (`USER_HZ`) to be 100 Hz, as on every
/// mainstream architecture.
///
/// ```
/// let registry = prometheus::Registry::new();
/// let metrics = sonde_agent::metrics::Metrics::builder()
///     .provider(sonde_agent::PrometheusProvider::new(registry.clone()))
///     .build();
/// let n = sonde_agent::register_process_metrics(&metrics);
/// assert_eq!(n > 0, cfg!(target_os = "linux"));
/// ```
pub fn register_process_metrics(metrics: &Metrics) -> usize {
    imp::register(metrics)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::{fs, path::Path};

    use crate::metrics::Metrics;

    /// `USER_HZ`: the unit of the CPU times in `/proc/self/stat` (see the module docs).
    const TICKS_PER_SECOND: f64 = 100.0;

    pub(super) fn register(metrics: &Metrics) -> usize {
        let Some(stat) = Stat::read() else {
            tracing::debug!(target: "sonde::metrics", "/proc/self/stat unreadable: no process metrics");
            return 0;
        };
        let errors_before = metrics.errors();
        let mut n: usize = 0;
        metrics.gauge_fn(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            || Stat::read().map_or(f64::NAN, |s| (s.utime + s.stime) / TICKS_PER_SECOND),
        );
        n += 1;
        metrics.gauge_fn(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            || status_kib("VmRSS:").map_or(f64::NAN, |kib| kib * 1024.0),
        );
        n += 1;
        metrics.gauge_fn(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            || Stat::read().map_or(f64::NAN, |s| s.vsize),
        );
        n += 1;
        metrics.gauge_fn(
            "process_open_fds",
            "Number of open file descriptors.",
            || open_fds().map_or(f64::NAN, |n| n as f64),
        );
        n += 1;
        if max_fds().is_some() {
            metrics.gauge_fn(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                || max_fds().unwrap_or(f64::NAN),
            );
            n += 1;
        }
        metrics.gauge_fn(
            "process_threads",
            "Number of OS threads in the process.",
            || Stat::read().map_or(f64::NAN, |s| s.threads),
        );
        n += 1;
        if let Some(boot) = boot_time() {
            let start = boot + stat.starttime / TICKS_PER_SECOND;
            metrics.gauge_fn(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                move || start,
            );
            n += 1;
        }
        // A provider without callback gauges refuses each (and says so once per metric).
        n.saturating_sub((metrics.errors() - errors_before) as usize)
    }

    /// The fields of `/proc/self/stat` used here (see proc(5)).
    struct Stat {
        utime: f64,
        stime: f64,
        threads: f64,
        starttime: f64,
        vsize: f64,
    }

    impl Stat {
        fn read() -> Option<Stat> {
            parse_stat(&fs::read_to_string("/proc/self/stat").ok()?)
        }
    }

    /// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may hold
    /// spaces and parentheses itself, so the fields are counted from the last `)`.
    fn parse_stat(text: &str) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        // Field 3 (state) is index 0.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            threads: field(20)?,
            starttime: field(22)?,
            vsize: field(23)?,
        })
    }

    /// A `kB` line of `/proc/self/status`.
    fn status_kib(key: &str) -> Option<f64> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    }

    fn open_fds() -> Option<usize> {
        // The directory handle reading it is one of the entries; it is not counted.
        let n = fs::read_dir(Path::new("/proc/self/fd")).ok()?.count();
        Some(n.saturating_sub(1))
    }

    fn max_fds() -> Option<f64> {
        let limits = fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let soft = line["Max open files".len()..].split_whitespace().next()?;
        match soft {
            "unlimited" => Some(f64::INFINITY),
            n => n.parse().ok(),
        }
    }

    /// Boot time, seconds since the epoch (`btime` in `/proc/stat`).
    fn boot_time() -> Option<f64> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn stat_fields_are_counted_from_the_last_parenthesis() {
            let line = "42 (a (weird) name) S 1 42 42 0 -1 4194304 101 0 0 0 250 50 0 0 20 0 \
                        7 0 403258 3133440 411 18446744073709551615 0";
            let s = parse_stat(line).expect("parses");
            assert_eq!((s.utime, s.stime), (250.0, 50.0));
            assert_eq!(s.threads, 7.0);
            assert_eq!(s.starttime, 403258.0);
            assert_eq!(s.vsize, 3133440.0);
            assert!(parse_stat("42 (x) S 1").is_none());
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use crate::metrics::Metrics;

    pub(super) fn register(_metrics: &Metrics) -> usize {
        0
    }
}
