//! The usual `process_*` metrics of the process that answers `/metrics`,
//! read from `/proc` at each scrape.

/// What `/proc` says about this process; zero where it could not be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    pub(crate) fn current() -> ProcessStats {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields = stat_fields(&stat);
        let field = |n: usize| -> u64 {
            fields
                .get(n)
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        // proc(5), counting from 1: utime 14, stime 15, starttime 22, rss 24;
        // `fields` starts at field 3.
        let (utime, stime, start_ticks, rss_pages) = (field(11), field(12), field(19), field(21));
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| boot_time(&text))
            .unwrap_or(0);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|entries| entries.count() as u64)
            .unwrap_or(0);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the struct we pass.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
        ProcessStats {
            cpu_seconds: (utime + stime) as f64 / ticks,
            resident_bytes: rss_pages * page_size,
            open_fds,
            max_fds: limit.rlim_cur,
            start_time_seconds: boot_time as f64 + start_ticks as f64 / ticks,
        }
    }
}

/// The fields of `/proc/PID/stat` after the command name (which is in
/// parentheses and may itself hold spaces and parentheses): field 3 onwards.
fn stat_fields(stat: &str) -> Vec<&str> {
    match stat.rfind(')') {
        Some(end) => stat[end + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// `btime` of `/proc/stat`: when the machine booted, in seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped() {
        let stat =
            "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 500 1000 25";
        let fields = stat_fields(stat);
        assert_eq!(fields[0], "S");
        assert_eq!(fields[11], "7");
        assert_eq!(fields[12], "3");
        assert_eq!(fields[19], "500");
        assert_eq!(fields[21], "25");
    }

    #[test]
    fn boot_time_comes_from_btime() {
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_process_is_seen() {
        let stats = ProcessStats::current();
        assert!(stats.resident_bytes > 0);
        assert!(stats.open_fds > 0);
        assert!(stats.max_fds >= stats.open_fds);
        assert!(stats.start_time_seconds > 1_600_000_000.0);
    }
}
