//! Helpers of the benchmark commands (`moola bench`, `reid bench`): timing statistics and running
//! the PyTorch side of a comparison.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

/// The median of some timings (the upper one for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// This process's peak resident memory in bytes (`VmHWM` of `/proc/self/status`; `None` where
/// that file does not exist).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

/// The `VmHWM:   1234 kB` line of a `/proc/<pid>/status` text, in bytes.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The benches' closing line: this process's peak resident memory next to the PyTorch side's
/// (as its script reported it; `-` when unknown).
pub fn peak_memory_line(torch_peak_bytes: Option<u64>) -> String {
    format!(
        "peak resident memory: Burn {}, PyTorch {}",
        format_gib(peak_rss_bytes()),
        format_gib(torch_peak_bytes)
    )
}

/// `bytes` as GiB with one decimal (MiB below 1 GiB), `-` when unknown.
pub fn format_gib(bytes: Option<u64>) -> String {
    match bytes {
        None => "-".into(),
        Some(b) if b < 1 << 30 => format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64),
        Some(b) => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
    }
}

/// Runs `python script args...` and parses its standard output as JSON. `python` defaults to
/// `python3`; the error carries the script's standard error (e.g. a missing `torch`).
pub fn run_python_json<T: DeserializeOwned>(
    python: Option<&Path>,
    script: &Path,
    args: &[String],
) -> Result<T> {
    let python = python.map_or_else(|| PathBuf::from("python3"), Path::to_path_buf);
    let output = std::process::Command::new(&python)
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} failed: {}",
            python.display(),
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{} printed malformed JSON", script.display()))
}

/// The PyTorch side of a benchmark command, flattened into its arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TorchSide {
    /// Python interpreter with torch (default `python3`; the side is skipped when torch is missing).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the PyTorch side.
    #[arg(long)]
    pub no_torch: bool,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl TorchSide {
    /// Runs `script` with `--flag value` pairs (see [`run_python_json`]). `None` when
    /// `--no-torch` is set or the script fails; the reason for a failure goes to standard error,
    /// since the Burn side's numbers stand on their own.
    pub fn run<T: DeserializeOwned>(&self, script: &Path, flags: &[(&str, String)]) -> Option<T> {
        if self.no_torch {
            return None;
        }
        eprintln!("timing PyTorch ...");
        let argv: Vec<String> = flags
            .iter()
            .flat_map(|(k, v)| [k.to_string(), v.clone()])
            .collect();
        run_python_json(self.python.as_deref(), script, &argv)
            .inspect_err(|e| eprintln!("PyTorch side skipped: {e:#}"))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn missing_interpreter_is_an_error() {
        let err = run_python_json::<serde_json::Value>(
            Some(Path::new("/nonexistent/python")),
            Path::new("x.py"),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/python"), "{err}");
    }

    #[test]
    fn torch_side_is_skipped_on_request_and_on_failure() {
        let skipped = TorchSide {
            no_torch: true,
            ..TorchSide::default()
        };
        assert!(skipped.run::<f64>(Path::new("x.py"), &[]).is_none());
        let failing = TorchSide {
            python: Some("/nonexistent/python".into()),
            ..TorchSide::default()
        };
        assert!(failing.run::<f64>(Path::new("x.py"), &[]).is_none());
    }

    #[test]
    fn peak_memory_is_read_from_proc_status() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t  2048 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS: 1 kB"), None);
        assert_eq!(format_gib(Some(3 << 29)), "1.5 GiB");
        assert_eq!(format_gib(Some(300 << 20)), "300 MiB");
        assert_eq!(format_gib(None), "-");
    }
}
