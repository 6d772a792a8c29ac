//! `artifacts/manifest.json`: what the artifacts directory holds, with a SHA-256 per file, so a
//! stacker or an audit can tell that the OOF matrices, folds and models it reads are the ones a
//! run produced (the reference's `utils/manifest.py` and `utils/hashing.py`,
//! <https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/utils/manifest.py>).
//!
//! ```json
//! {
//!   "created_at": "2026-12-01T15:15:28Z",
//!   "git_sha": "3f0c…",
//!   "models": ["simple_lstm"],
//!   "artifacts": { "oof/simple_lstm/v1/seed_1337.npy": "9b1d…", "splits/v1/fold_0.json": "…" }
//! }
//! ```
//!
//! Differences from the reference: `git_sha` is the full `git rev-parse HEAD` of the current
//! directory, or `null` (not `"unknown"`) outside a git work tree; the hashed extensions add
//! `.mpk` (this project's model weights) and `.parquet`; only the manifest at the root is left
//! out (the reference skips every file named `manifest.json`); a file that cannot be read is an
//! error rather than an `"error: …"` entry.
//!
//! This module also holds [`write_atomic`], the artifact writer of the OOF pipeline.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File name of the manifest at the root of the artifacts directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Extensions (without the dot) whose files the manifest hashes.
pub const HASHED_EXTENSIONS: &[&str] = &["pkl", "npy", "json", "mpk", "parquet"];

/// The manifest's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Creation time, RFC 3339 in UTC (`2026-12-01T15:15:28Z`).
    pub created_at: String,
    /// `git rev-parse HEAD` of the current directory, `None` outside a git work tree.
    pub git_sha: Option<String>,
    /// Models whose artifacts the manifest covers (informational).
    pub models: Vec<String>,
    /// SHA-256 (lower-case hex) of every hashed file, by `/`-separated path relative to the
    /// artifacts directory, sorted.
    pub artifacts: BTreeMap<String, String>,
}

/// Writes `bytes` to `path` atomically: a uniquely named temporary file in the same directory
/// (created when missing) is written, flushed to disk, then renamed over `path`. Readers see the
/// old file or the new one, never a partial one; two concurrent writers each rename a complete
/// file, and the last rename wins. Unlike [`kiln::io::write_atomic`], whose temporary name is
/// per process, two threads of one process may write the same path at once. The temporary name
/// (`.<name>.<random>.tmp`) matches none of the [`HASHED_EXTENSIONS`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    // On failure the temporary file is removed when `tmp` drops.
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot move the temporary file to {}", path.display()))?;
    Ok(())
}

/// SHA-256 of a file's content, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of every file under `artifacts_dir` with a [hashed extension](HASHED_EXTENSIONS),
/// except `<artifacts_dir>/manifest.json`, keyed by relative `/`-separated path. Symbolic links
/// to files are hashed; linked directories are not followed. A file that vanishes between
/// listing and hashing (a concurrent writer's cleanup) is skipped with a warning.
pub fn hash_artifacts(artifacts_dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![artifacts_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let path = entry.path();
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                stack.push(path);
                continue;
            }
            let hashed = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| HASHED_EXTENSIONS.contains(&e));
            if !hashed || path == artifacts_dir.join(MANIFEST_FILE) {
                continue;
            }
            if file_type.is_symlink() && !path.is_file() {
                continue;
            }
            let rel = path
                .strip_prefix(artifacts_dir)
                .expect("listed under the artifacts directory")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            match sha256_file(&path) {
                Ok(h) => {
                    out.insert(rel, h);
                }
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
                        || !path.exists() =>
                {
                    tracing::warn!("{} vanished while hashing; left out", path.display());
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

/// The full commit of `HEAD` (`git rev-parse HEAD` in the current directory), if git runs and
/// the directory is in a work tree.
pub fn git_sha() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let sha = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !sha.is_empty()).then_some(sha)
}

/// `t` as RFC 3339 UTC with whole seconds (`1970-01-01T00:00:00Z`); times before 1970 clamp to
/// the epoch.
pub fn rfc3339_utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Builds the manifest of `artifacts_dir` (now, `git rev-parse HEAD`, every hashed file).
pub fn create_manifest(artifacts_dir: &Path, models: &[String]) -> Result<Manifest> {
    Ok(Manifest {
        created_at: rfc3339_utc(std::time::SystemTime::now()),
        git_sha: git_sha(),
        models: models.to_vec(),
        artifacts: hash_artifacts(artifacts_dir)?,
    })
}

/// Builds the manifest of `artifacts_dir` and writes it atomically to
/// `<artifacts_dir>/manifest.json`; returns its path and content.
pub fn write_manifest(artifacts_dir: &Path, models: &[String]) -> Result<(PathBuf, Manifest)> {
    let manifest = create_manifest(artifacts_dir, models)?;
    let path = artifacts_dir.join(MANIFEST_FILE);
    let mut bytes = serde_json::to_vec_pretty(&manifest)?;
    bytes.push(b'\n');
    write_atomic(&path, &bytes)?;
    Ok((path, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2000-02-29T12:34:56Z (a leap day) and 2026-12-01T15:15:28Z.
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_827_696)),
            "2000-02-29T12:34:56Z"
        );
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(1_796_138_128)),
            "2026-12-01T15:15:28Z"
        );
    }

    #[test]
    fn sha256_of_a_known_string() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hashes_the_right_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "manifest.json",
            "oof/m/v1/seed_1.npy",
            "splits/v1/fold_0.json",
            "models/m/model.mpk",
            "models/m/notes.txt",
            "sub/manifest.json",
            "oof/m/v1/.seed_1.npy.abc.tmp",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f.as_bytes()).unwrap();
        }
        let h = hash_artifacts(root).unwrap();
        assert_eq!(
            h.keys().collect::<Vec<_>>(),
            [
                "models/m/model.mpk",
                "oof/m/v1/seed_1.npy",
                "splits/v1/fold_0.json",
                "sub/manifest.json"
            ]
        );
        let (path, m) = write_manifest(root, &["m".into()]).unwrap();
        let back: Manifest = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x/out.npy");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
