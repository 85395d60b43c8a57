//! [`Actor`]: who makes a change, as the audit log records it; and the audit log's API shapes
//! (the `since` parameter, an entry as JSON).
//!
//! Entries are written by the store in the transaction of the change they describe (see
//! [`super::store`]); refused requests are written on their own. Entries older than
//! `--audit-retention-days` are pruned by the server's housekeeping.

use std::net::IpAddr;

use serde::Serialize;
use sonde_proto::tracepoint::TracePointConfig;

use super::store::{AuditEntry, AuditRecord};

/// Which face of the server a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The HTTP API.
    Http,
    /// The gRPC `TracepointService`.
    Grpc,
    /// The HTTP API, from `sonde` (its requests say so in `User-Agent`).
    Cli,
}

impl Via {
    /// The name the audit log uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Grpc => "grpc",
            Via::Cli => "cli",
        }
    }
}

/// The `User-Agent` prefix of the `sonde` CLI.
pub const CLI_USER_AGENT: &str = "sonde-cli/";

/// Who asks for a change: the token's name, how, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's name (or `anonymous`).
    pub who: String,
    /// HTTP, gRPC or the CLI.
    pub via: Via,
    /// The peer's IP address.
    pub address: Option<IpAddr>,
}

impl Actor {
    /// An actor for tests and embedding: `who` through HTTP from nowhere.
    pub fn named(who: &str) -> Self {
        Self {
            who: who.to_owned(),
            via: Via::Http,
            address: None,
        }
    }

    /// The audit record of `action` by this actor, now, with the tracepoint before and after.
    pub fn record(
        &self,
        tenant: &str,
        action: &str,
        id: Option<&str>,
        before: Option<&TracePointConfig>,
        after: Option<&TracePointConfig>,
    ) -> AuditRecord {
        let json = |tp: Option<&TracePointConfig>| tp.and_then(|t| serde_json::to_string(t).ok());
        AuditRecord {
            at_ms: now_ms(),
            tenant: tenant.to_owned(),
            who: self.who.clone(),
            via: self.via.as_str().to_owned(),
            address: self.address.map(|a| a.to_string()),
            action: action.to_owned(),
            tracepoint: id.map(str::to_owned),
            before: json(before),
            after: json(after),
            detail: None,
        }
    }
}

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Parses `since`: Unix time (numbers below 10^11 are seconds, larger ones milliseconds, as for
/// tracepoint windows), an age (`90s`, `15m`, `2h`, `7d`: that long before `now_ms`), or an
/// RFC 3339 UTC time (`2026-01-31T12:00:00Z`, fraction optional). Returns Unix milliseconds.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        return Ok(if n < 100_000_000_000 { n * 1000 } else { n });
    }
    if let Some(unit) = text.chars().last().filter(|c| "smhd".contains(*c)) {
        let scale = match unit {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            _ => 86_400_000,
        };
        if let Ok(n) = text[..text.len() - 1].parse::<i64>() {
            return Ok(now_ms - n.max(0).saturating_mul(scale));
        }
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!(
            "{text:?} is not a time: give Unix seconds or milliseconds, an age such as 2h or 7d, or RFC 3339 such as 2026-01-31T12:00:00Z"
        )
    })
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z').or_else(|| text.strip_suffix('z'))?;
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let ms = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        digits.parse::<i64>().ok()?
    };
    Some((days_from_civil(y, mo, day) * 86_400 + h * 3600 + mi * 60 + s) * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds (`2026-01-31T12:00:00.000Z`).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// An audit entry as `GET /api/audit` answers it.
#[derive(Debug, Serialize)]
pub struct EntryView {
    seq: i64,
    time: String,
    at_ms: i64,
    tenant: String,
    who: String,
    via: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracepoint: Option<String>,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl From<AuditEntry> for EntryView {
    fn from(e: AuditEntry) -> Self {
        let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        let r = e.record;
        Self {
            seq: e.seq,
            time: rfc3339(r.at_ms),
            at_ms: r.at_ms,
            tenant: r.tenant,
            who: r.who,
            via: r.via,
            address: r.address,
            action: r.action,
            tracepoint: r.tracepoint,
            before: parse(r.before),
            after: parse(r.after),
            detail: r.detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        for ms in [0, 951_782_400_123, 1_800_000_000_999, 4_102_444_800_000] {
            assert_eq!(parse_since(&rfc3339(ms), 0), Ok(ms), "{}", rfc3339(ms));
        }
        assert_eq!(
            parse_since("2026-01-31T12:00:00Z", 0),
            Ok(1_769_860_800_000)
        );
    }

    #[test]
    fn since_takes_numbers_and_ages() {
        assert_eq!(parse_since("1700000000", 0), Ok(1_700_000_000_000));
        assert_eq!(parse_since("1700000000123", 0), Ok(1_700_000_000_123));
        assert_eq!(parse_since("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert_eq!(parse_since("7d", 0), Ok(-7 * 86_400_000));
        assert!(parse_since("yesterday", 0).is_err());
        assert!(parse_since("2026-13-01T00:00:00Z", 0).is_err());
    }
}
