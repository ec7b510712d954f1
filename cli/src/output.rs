//! Text formatting for humans: aligned tables, short durations, one-line
//! truncated text and payload rendering.

use std::fmt::Write as _;

/// How a column's cells are aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text columns.
    Left,
    /// Number columns.
    Right,
}

/// Renders rows under a header with columns padded to their widest cell.
/// The last column is not padded, so long text does not leave trailing spaces.
pub fn table(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = header.iter().map(|(h, _)| h.to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for (i, ((_, align), cell)) in header.iter().zip(row).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let width = widths[i];
            let last = i + 1 == header.len();
            match align {
                Align::Right => {
                    let _ = write!(line, "{cell:>width$}");
                }
                Align::Left if last => line.push_str(cell),
                Align::Left => {
                    let _ = write!(line, "{cell:<width$}");
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Renders `key  value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// A duration in seconds as `850ms`, `42s`, `3m12s`, `2h05m` or `3d04h`.
pub fn short_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds <= 0.0 {
        return "0s".to_string();
    }
    if seconds < 1.0 {
        return format!("{}ms", (seconds * 1000.0).round() as u64);
    }
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `text` on one line (line breaks and other control characters escaped),
/// cut to at most `max` characters with a trailing `…` when longer.
pub fn truncate(text: &str, max: usize) -> String {
    let line = escape_controls(text);
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A payload as text when it is valid UTF-8 (control characters escaped so
/// it stays on one line), else `<N bytes>`.
pub fn payload(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => escape_controls(text),
        Err(_) => format!("<{} bytes>", bytes.len()),
    }
}

/// Escapes control characters (`\n`, `\t`, `\u{1b}`, ...) and nothing else.
fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `1 dead letter`, `2 dead letters`.
pub fn plural(n: u64, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let text = table(
            &[
                ("TOPIC", Align::Left),
                ("N", Align::Right),
                ("NOTE", Align::Left),
            ],
            &[
                vec!["orders".into(), "12".into(), "x".into()],
                vec!["a".into(), "3".into(), "".into()],
            ],
        );
        assert_eq!(text, "TOPIC    N  NOTE\norders  12  x\na        3\n");
    }

    #[test]
    fn key_values_align() {
        assert_eq!(
            key_values(&[("a", "1".into()), ("abc", "2".into())]),
            "a    1\nabc  2\n"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(0.0), "0s");
        assert_eq!(short_duration(0.25), "250ms");
        assert_eq!(short_duration(42.4), "42s");
        assert_eq!(short_duration(192.0), "3m12s");
        assert_eq!(short_duration(7500.0), "2h05m");
        assert_eq!(short_duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3d04h");
    }

    #[test]
    fn text_is_one_line_and_truncated() {
        assert_eq!(truncate("a\nb", 10), "a\\nb");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
    }

    #[test]
    fn payloads() {
        assert_eq!(payload(b"{\"n\":1}"), "{\"n\":1}");
        assert_eq!(payload(b"a\tb"), "a\\tb");
        assert_eq!(payload(&[0xff, 0xfe, 0]), "<3 bytes>");
    }
}
