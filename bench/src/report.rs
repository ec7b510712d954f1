//! Printing: section headers, units, the MET/MISSED verdicts and the final
//! summary table.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::context::Figure;

pub(crate) fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

/// 1234567 -> "1,234,567".
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

pub(crate) fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "MET",
        Some(false) => "MISSED",
        None => "-",
    }
}

pub(crate) fn header(title: &str) {
    println!("\n== {title} ==");
}

pub(crate) fn print_summary(figures: &[Figure]) {
    header("Summary");
    if figures.is_empty() {
        println!("  (no figures: the sections run print none)");
        return;
    }
    let width = figures.iter().map(|f| f.name.len()).max().unwrap_or(10);
    let vwidth = figures.iter().map(|f| f.value.len()).max().unwrap_or(10);
    println!(
        "  {:<width$}  {:<vwidth$}  {:<18}  result",
        "figure", "value", "target"
    );
    for f in figures {
        println!(
            "  {:<width$}  {:<vwidth$}  {:<18}  {}",
            f.name,
            f.value,
            f.target,
            verdict(f.met)
        );
    }
    let judged: Vec<_> = figures.iter().filter_map(|f| f.met).collect();
    let met = judged.iter().filter(|m| **m).count();
    println!("  targets met: {met} of {}", judged.len());
}
