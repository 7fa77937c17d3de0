//! Aligned text tables for terminals, and the compact ages and run times shown in them.

use std::time::{Duration, SystemTime};

/// Renders rows under a header, each column padded to its widest cell (the last one is not
/// padded). Cells are counted in characters.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A compact duration: `45s`, `12m`, `3h`, `5d`.
pub fn compact(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// How long something ran, to a tenth of a second while that matters: `0.6s`, `59.0s`,
/// `2m03s`, `1h02m`.
pub fn run_time(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..100 => format!("{:.1}s", d.as_secs_f64()),
        100..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// Parses an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s)
        .ok()
        .or_else(|| humantime::parse_rfc3339_weak(s).ok())
}

/// How long ago `ts` was (`-` when absent or unparsable).
pub fn age(ts: Option<&str>, now: SystemTime) -> String {
    ts.and_then(parse_time)
        .and_then(|t| now.duration_since(t).ok())
        .map(compact)
        .unwrap_or_else(|| "-".into())
}

/// The run time between two timestamps (see [`run_time`]), or from `from` to now while `to` is
/// absent.
pub fn between(from: Option<&str>, to: Option<&str>, now: SystemTime) -> String {
    let Some(start) = from.and_then(parse_time) else {
        return "-".into();
    };
    let end = to.and_then(parse_time).unwrap_or(now);
    run_time(end.duration_since(start).unwrap_or_default())
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    v /= 1024.0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

/// Shortens `s` to `max` characters with an ellipsis; control characters become spaces.
pub fn clip(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut out: String = flat.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = render(
            &["ID", "STATUS", "COMMAND"],
            &[
                vec!["a".into(), "running".into(), "make".into()],
                vec!["bbbb".into(), "ok".into(), "x".into()],
            ],
        );
        assert_eq!(
            t,
            "ID    STATUS   COMMAND\na     running  make\nbbbb  ok       x\n"
        );
    }

    #[test]
    fn compact_durations_and_times() {
        assert_eq!(compact(Duration::from_secs(5)), "5s");
        assert_eq!(compact(Duration::from_secs(125)), "2m");
        assert_eq!(compact(Duration::from_secs(7200)), "2h");
        assert_eq!(compact(Duration::from_secs(3 * 86400)), "3d");
        let t0 = parse_time("2026-01-01T00:00:00.250Z").unwrap();
        let t1 = parse_time("2026-01-01T00:01:30Z").unwrap();
        assert_eq!(
            t1.duration_since(t0).unwrap(),
            Duration::from_millis(89_750)
        );
        assert_eq!(
            between(
                Some("2026-01-01T00:00:00Z"),
                Some("2026-01-01T00:00:09Z"),
                t1
            ),
            "9.0s"
        );
        assert_eq!(run_time(Duration::from_millis(607)), "0.6s");
        assert_eq!(run_time(Duration::from_millis(3140)), "3.1s");
        assert_eq!(run_time(Duration::from_secs(123)), "2m03s");
        assert_eq!(run_time(Duration::from_secs(3720)), "1h02m");
        assert_eq!(clip("abcdef", 4), "abc…");
    }

    #[test]
    fn byte_counts_for_people() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(300_000), "293 KiB");
        assert_eq!(bytes(256 << 20), "256 MiB");
        assert_eq!(bytes(5 << 40), "5.0 TiB");
    }
}
