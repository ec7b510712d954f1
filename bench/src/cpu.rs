//! CPU time from /proc: of this process, its children, PostgreSQL's
//! processes and backends, the broker, and the whole machine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::context::Bench;

/// (comm, utime + stime in clock ticks) of /proc/<pid>/stat.
pub(crate) fn proc_stat(path: &str) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    // Fields after the command: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// (comm, CPU ticks) of every process, by pid.
pub(crate) fn process_ticks() -> HashMap<i32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(stat) = proc_stat(&format!("/proc/{pid}/stat")) {
            out.insert(pid, stat);
        }
    }
    out
}

/// CPU ticks of every process named `postgres`, by pid.
pub(crate) fn postgres_ticks() -> HashMap<i32, u64> {
    process_ticks()
        .into_iter()
        .filter(|(_, (comm, _))| comm == "postgres")
        .map(|(pid, (_, ticks))| (pid, ticks))
        .collect()
}

/// CPU seconds that the processes named `comm` used between two
/// [`process_ticks`] snapshots (a process that started in between counts
/// from zero; one that exited in between is not counted).
pub(crate) fn ticks_between(
    before: &HashMap<i32, (String, u64)>,
    after: &HashMap<i32, (String, u64)>,
    comm: &str,
) -> f64 {
    let ticks: u64 = after
        .iter()
        .filter(|(_, (c, _))| c == comm)
        .map(|(pid, (_, t))| {
            let earlier = before
                .get(pid)
                .filter(|(c, _)| c == comm)
                .map_or(0, |(_, t0)| *t0);
            t.saturating_sub(earlier)
        })
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

/// This process's CPU time over `window` of sleeping, as % of one core.
pub(crate) async fn own_cpu_over(window: Duration) -> f64 {
    let before = proc_stat("/proc/self/stat").map_or(0, |s| s.1);
    let wall0 = Instant::now();
    tokio::time::sleep(window).await;
    let wall = wall0.elapsed().as_secs_f64();
    let after = proc_stat("/proc/self/stat").map_or(0, |s| s.1);
    100.0 * after.saturating_sub(before) as f64 / clock_ticks_per_second() / wall
}

/// `getconf CLK_TCK`, asked once per process.
pub(crate) fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Cores this process may run on (`nproc`).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Busy CPU time of the whole machine (every process: this one, PostgreSQL,
/// the broker) since boot, in seconds: the `cpu` line of /proc/stat, all but
/// idle and iowait.
pub(crate) fn machine_busy_seconds() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy as f64 / clock_ticks_per_second()
}

/// CPU seconds this process has used (`/proc/self/stat` utime + stime).
pub(crate) fn own_cpu_seconds() -> f64 {
    proc_stat("/proc/self/stat").map_or(0.0, |s| s.1 as f64) / clock_ticks_per_second()
}

/// CPU seconds this process's children have used, once they have exited
/// and been waited for (`/proc/self/stat` cutime + cstime).
pub(crate) fn children_cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|text| {
            let close = text.rfind(')')?;
            let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
            let cutime: u64 = fields.get(13)?.parse().ok()?;
            let cstime: u64 = fields.get(14)?.parse().ok()?;
            Some(cutime + cstime)
        })
        .unwrap_or(0);
    ticks as f64 / clock_ticks_per_second()
}

/// Busy CPU seconds over a timed interval: the whole machine's, and the
/// shares of this process, of its children that exited and were waited for
/// in the interval (a relay program it ran), of PostgreSQL's processes and
/// of the JVM's (the Kafka broker).
#[derive(Clone, Copy)]
pub(crate) struct Busy {
    pub(crate) machine: f64,
    pub(crate) own: f64,
    pub(crate) children: f64,
    pub(crate) postgres: f64,
    pub(crate) java: f64,
}

/// Starts clocking the machine's CPU for a timed interval.
pub(crate) struct MachineCpu {
    pub(crate) machine: f64,
    pub(crate) own: f64,
    pub(crate) children: f64,
    pub(crate) processes: HashMap<i32, (String, u64)>,
}

impl MachineCpu {
    pub(crate) fn start() -> MachineCpu {
        MachineCpu {
            machine: machine_busy_seconds(),
            own: own_cpu_seconds(),
            children: children_cpu_seconds(),
            processes: process_ticks(),
        }
    }

    /// Ends the interval: its busy CPU.
    pub(crate) fn stop(self) -> Busy {
        let machine = machine_busy_seconds() - self.machine;
        let own = own_cpu_seconds() - self.own;
        let children = children_cpu_seconds() - self.children;
        let processes = process_ticks();
        Busy {
            machine,
            own,
            children,
            postgres: ticks_between(&self.processes, &processes, "postgres"),
            java: ticks_between(&self.processes, &processes, "java"),
        }
    }
}

pub(crate) async fn backend_pids(b: &Bench) -> Result<Vec<i32>> {
    Ok(sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&b.app_name)
    .fetch_all(&b.pool)
    .await?)
}
