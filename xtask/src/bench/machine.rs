//! What the benchmark ran on, for the report.

use camino::Utf8Path;
use xshell::{cmd, Shell};

use crate::bundle::human_bytes;
use crate::lab::Engine;

pub(super) struct Machine {
    pub(super) cpu: String,
    pub(super) features: String,
    pub(super) cores: usize,
    pub(super) ram: String,
    pub(super) disk: String,
    pub(super) kernel: String,
    pub(super) docker: String,
    pub(super) buildx: String,
    pub(super) compose: String,
    pub(super) load: String,
    pub(super) date: String,
}

impl Machine {
    /// This machine, the disk under `work`, and the Docker versions of `engine`.
    pub(super) fn describe(engine: &Engine, work: &Utf8Path) -> anyhow::Result<Machine> {
        let sh = Shell::new()?;
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = field(&cpuinfo, "flags");
        let features: Vec<&str> = ["sha_ni", "avx2", "avx512f"]
            .into_iter()
            .filter(|f| flags.split_whitespace().any(|x| x == *f))
            .collect();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: u64 = field(&meminfo, "MemTotal")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(0);
        let disk = cmd!(sh, "df -h --output=source,fstype,size,avail {work}")
            .quiet()
            .read()
            .unwrap_or_default();
        let read = |c: xshell::Cmd<'_>| c.quiet().ignore_stderr().read().unwrap_or_default();
        let docker = |args: &[&str]| read(engine.docker(&sh, args));
        Ok(Machine {
            cpu: field(&cpuinfo, "model name"),
            features: features.join(", "),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            ram: human_bytes(mem_kb * 1024),
            disk: disk.lines().nth(1).unwrap_or_default().to_string(),
            kernel: read(cmd!(sh, "uname -r")),
            docker: docker(&["version", "--format", "{{.Server.Version}}"]),
            buildx: docker(&["buildx", "version"]),
            compose: docker(&["compose", "version", "--short"]),
            load: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
            date: read(cmd!(sh, "date -u +%Y-%m-%dT%H:%MZ")),
        })
    }
}

/// The value of the first `name: value` line of a /proc file.
fn field(text: &str, name: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}
