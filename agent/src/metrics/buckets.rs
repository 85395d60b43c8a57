//! [`Buckets`]: histogram bucket presets.

/// Histogram bucket presets.
#[derive(Debug, Clone, Copy)]
pub struct Buckets;

impl Buckets {
    /// Latencies in seconds, 5 ms to 10 s.
    pub const LATENCY_SECONDS: &'static [f64] = &[
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    /// Latencies in milliseconds, 5 ms to 10 s ([`Buckets::LATENCY_SECONDS`] scaled by 1000).
    pub const LATENCY_MILLISECONDS: &'static [f64] = &[
        5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ];
    /// Numbers of unknown scale (amounts, counts), 1 to about a million by powers of four.
    pub const WIDE: &'static [f64] = &[
        1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
    ];
    /// Sizes in bytes, 64 B to 16 MiB by powers of four.
    pub const SIZES_BYTES: &'static [f64] = &[
        64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    ];
    /// Token counts (LLM prompts and completions), 16 to 32k by powers of two.
    pub const TOKENS: &'static [f64] = &[
        16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
    ];
}

/// The buckets a tracepoint histogram gets when its tracepoint sets none (`args.buckets`), by the
/// metric's unit: `seconds`, `milliseconds`, `bytes`; any other unit, or none, gets
/// [`Buckets::WIDE`].
pub(crate) fn for_unit(unit: Option<&str>) -> &'static [f64] {
    match unit {
        Some("seconds") => Buckets::LATENCY_SECONDS,
        Some("milliseconds") => Buckets::LATENCY_MILLISECONDS,
        Some("bytes") => Buckets::SIZES_BYTES,
        _ => Buckets::WIDE,
    }
}
