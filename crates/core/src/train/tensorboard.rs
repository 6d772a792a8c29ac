//! TensorBoard event files: a writer of scalar summaries and the [`TensorBoardLogger`] callback
//! that every run with a run directory gets (`TrainerConfig::tensorboard`).
//!
//! The format is written here directly (no TensorFlow or protobuf dependency): a file is a
//! sequence of TFRecords,
//!
//! ```text
//! u64 length (little endian) | u32 masked CRC-32C of those 8 bytes | data | u32 masked CRC-32C of data
//! ```
//!
//! with `mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`, and each record's data is an
//! `Event` protobuf: `wall_time` (double, field 1), `step` (int64, field 2), and either
//! `file_version` (string, field 3: `"brain.Event:2"`, the first record) or `summary` (field 5:
//! `Summary { repeated Value value = 1 }`, `Value { string tag = 1; float simple_value = 2 }`).
//! Files are named `events.out.tfevents.<unix seconds>.<hostname>`, so that
//! `tensorboard --logdir RUN_DIR` finds them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::train::callbacks::{Actions, Callback, EpochEnd, StepEnd};

/// The `file_version` of the first record.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Prefix of every event file name.
pub const FILE_PREFIX: &str = "events.out.tfevents.";

const MASK_DELTA: u32 = 0xa282_ead8;

/// TFRecord's masked CRC-32C.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    // ((crc >> 15) | (crc << 17)) of the format's definition.
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The `Event` protobuf of one record.
fn encode_event(wall_time: f64, step: i64, body: &EventBody<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    put_key(&mut out, 1, 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    put_key(&mut out, 2, 0);
    put_varint(&mut out, step as u64);
    match body {
        EventBody::FileVersion(v) => put_bytes(&mut out, 3, v.as_bytes()),
        EventBody::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, value) in *values {
                let mut v = Vec::new();
                put_bytes(&mut v, 1, tag.as_bytes());
                put_key(&mut v, 2, 5);
                v.extend_from_slice(&value.to_le_bytes());
                put_bytes(&mut summary, 1, &v);
            }
            put_bytes(&mut out, 5, &summary);
        }
    }
    out
}

enum EventBody<'a> {
    FileVersion(&'a str),
    Scalars(&'a [(String, f32)]),
}

/// One TFRecord (framing around `data`).
fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The machine's host name (`localhost` when it cannot be read).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).to_string();
    if rc != 0 || name.is_empty() {
        "localhost".into()
    } else {
        // Path separators cannot be part of a file name.
        name.replace(['/', '\\'], "_")
    }
}

/// An open event file taking scalar summaries.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `events.out.tfevents.<unix seconds>.<hostname>` in `dir` (made if missing) and
    /// writes its `file_version` record. A second writer in the same second gets a `.1`, `.2`, …
    /// suffix instead of replacing the first one's file.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
        let wall = now();
        let base = format!("{FILE_PREFIX}{}.{}", wall as u64, hostname());
        let mut path = dir.join(&base);
        let mut n = 0;
        while path.exists() {
            n += 1;
            path = dir.join(format!("{base}.{n}"));
        }
        let file = File::create(&path)
            .with_context(|| format!("cannot create event file {}", path.display()))?;
        let mut w = Self {
            path,
            out: BufWriter::new(file),
        };
        w.record(&encode_event(
            wall,
            0,
            &EventBody::FileVersion(FILE_VERSION),
        ))?;
        w.flush()?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        self.out
            .write_all(&frame(data))
            .with_context(|| format!("cannot write event file {}", self.path.display()))
    }

    /// Writes one event with scalar `values` (tag, value) at `step`; non-finite values are
    /// written as they are (TensorBoard shows them as NaN / inf).
    pub fn scalars(&mut self, step: i64, values: &[(String, f32)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.record(&encode_event(now(), step, &EventBody::Scalars(values)))
    }

    /// Writes one scalar at `step`.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32) -> Result<()> {
        self.scalars(step, &[(tag.to_string(), value)])
    }

    /// Flushes buffered records to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("cannot write event file {}", self.path.display()))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

/// One decoded event of a file (see [`read_events`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    /// Global step.
    pub step: i64,
    /// `file_version`, on the first record.
    pub file_version: Option<String>,
    /// Scalar summaries (tag, value).
    pub scalars: Vec<(String, f32)>,
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = buf.get(*pos) else {
            bail!("truncated varint");
        };
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    bail!("varint too long")
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8]> {
    let end = pos.checked_add(n).filter(|&e| e <= buf.len());
    let Some(end) = end else {
        bail!("truncated field");
    };
    let s = &buf[*pos..end];
    *pos = end;
    Ok(s)
}

/// Protobuf fields of a message: (field number, wire type, payload); varints come as their
/// 8 little-endian bytes.
fn fields(buf: &[u8]) -> Result<Vec<(u32, u8, Vec<u8>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = get_varint(buf, &mut pos)?;
        let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
        let payload = match wire {
            0 => get_varint(buf, &mut pos)?.to_le_bytes().to_vec(),
            1 => take(buf, &mut pos, 8)?.to_vec(),
            2 => {
                let n = get_varint(buf, &mut pos)? as usize;
                take(buf, &mut pos, n)?.to_vec()
            }
            5 => take(buf, &mut pos, 4)?.to_vec(),
            _ => bail!("unsupported protobuf wire type {wire}"),
        };
        out.push((field, wire, payload));
    }
    Ok(out)
}

fn decode_event(data: &[u8]) -> Result<Event> {
    let mut event = Event {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        scalars: Vec::new(),
    };
    for (field, wire, payload) in fields(data)? {
        match (field, wire) {
            (1, 1) => event.wall_time = f64::from_le_bytes(payload[..8].try_into()?),
            (2, 0) => event.step = i64::from_le_bytes(payload[..8].try_into()?),
            (3, 2) => event.file_version = Some(String::from_utf8(payload)?),
            (5, 2) => {
                for (f, w, value) in fields(&payload)? {
                    if (f, w) != (1, 2) {
                        continue;
                    }
                    let mut tag = String::new();
                    let mut simple = None;
                    for (f, w, p) in fields(&value)? {
                        match (f, w) {
                            (1, 2) => tag = String::from_utf8(p)?,
                            (2, 5) => simple = Some(f32::from_le_bytes(p[..4].try_into()?)),
                            _ => {}
                        }
                    }
                    if let Some(v) = simple {
                        event.scalars.push((tag, v));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(event)
}

/// Reads an event file back, checking both CRCs of every record (for tests and tools).
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read event file {}", path.display()))?;
    let mut pos = 0;
    let mut events = Vec::new();
    while pos < bytes.len() {
        let (at, index) = (pos, events.len());
        let what = || format!("{}: record {index} at byte {at}", path.display());
        let head = take(&bytes, &mut pos, 12).with_context(what)?;
        let len_bytes = &head[..8];
        let len_crc = u32::from_le_bytes(head[8..12].try_into()?);
        if masked_crc(len_bytes) != len_crc {
            bail!("{}: bad length CRC", what());
        }
        let len = u64::from_le_bytes(len_bytes.try_into()?) as usize;
        let data = take(&bytes, &mut pos, len).with_context(what)?;
        let crc = u32::from_le_bytes(take(&bytes, &mut pos, 4).with_context(what)?.try_into()?);
        if masked_crc(data) != crc {
            bail!("{}: bad data CRC", what());
        }
        events.push(decode_event(data).with_context(what)?);
    }
    Ok(events)
}

/// The event files in `dir`, oldest name first.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(FILE_PREFIX))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Logs a run to a TensorBoard event file in its run directory: every optimiser step's
/// training loss and per-batch logs (`step/…`), learning rate, `16-mixed` loss scale and step
/// time, and every epoch's metrics (`epoch/…`, at the epoch's last global step, as in
/// metrics.csv). Created by the trainer for every run with a run directory unless
/// `TrainerConfig::tensorboard` is off; it holds no checkpoint state (a resumed run opens a new
/// file beside the old one, and TensorBoard shows both).
pub struct TensorBoardLogger {
    dir: PathBuf,
    writer: Option<EventWriter>,
    /// Flush every this many steps (epoch ends always flush).
    flush_every: usize,
    pending: usize,
}

impl TensorBoardLogger {
    /// A logger writing into `dir` (the file is created at the first event).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            writer: None,
            flush_every: 50,
            pending: 0,
        }
    }

    /// The event file, once created.
    pub fn path(&self) -> Option<&Path> {
        self.writer.as_ref().map(EventWriter::path)
    }

    fn writer(&mut self) -> Result<&mut EventWriter> {
        if self.writer.is_none() {
            self.writer = Some(EventWriter::create(&self.dir)?);
        }
        Ok(self.writer.as_mut().expect("just created"))
    }
}

impl Callback for TensorBoardLogger {
    fn name(&self) -> String {
        "tensorboard".into()
    }

    fn on_train_step(&mut self, ctx: &StepEnd<'_>) -> Result<()> {
        let mut values: Vec<(String, f32)> = vec![
            ("step/loss".into(), ctx.loss as f32),
            ("step/lr".into(), ctx.lr as f32),
            ("step/seconds".into(), ctx.seconds as f32),
        ];
        if let Some(scale) = ctx.loss_scale {
            values.push(("step/loss_scale".into(), scale as f32));
        }
        for (name, v) in ctx.logs {
            values.push((format!("step/{name}"), *v as f32));
        }
        let step = ctx.global_step as i64;
        let flush_every = self.flush_every;
        let w = self.writer()?;
        w.scalars(step, &values)?;
        self.pending += 1;
        if self.pending >= flush_every {
            self.pending = 0;
            self.writer()?.flush()?;
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, ctx: &EpochEnd<'_>, _actions: &mut Actions) -> Result<()> {
        let mut values: Vec<(String, f32)> = ctx
            .metrics
            .iter()
            .map(|(k, v)| (format!("epoch/{k}"), *v as f32))
            .collect();
        values.push(("epoch/epoch".into(), ctx.epoch as f32));
        let w = self.writer()?;
        w.scalars(ctx.global_step as i64, &values)?;
        w.flush()?;
        self.pending = 0;
        Ok(())
    }

    fn on_fit_end(&mut self, _actions: &mut Actions) {
        if let Some(w) = &mut self.writer
            && let Err(e) = w.flush()
        {
            tracing::warn!("{e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::metric_log::Row;

    /// Known CRC-32C values: the empty string and "123456789" (0xe3069283), masked by hand.
    #[test]
    #[allow(clippy::manual_rotate)] // the definition, spelled as the format states it
    fn masked_crc_matches_the_definition() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let crc: u32 = 0xe306_9283;
        let masked = ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8);
        assert_eq!(masked_crc(b"123456789"), masked);
    }

    /// The first record of an event file, byte for byte (protobuf field keys and lengths by
    /// hand): wall_time 1.5, step 0, file_version.
    #[test]
    fn file_version_event_bytes() {
        let data = encode_event(1.5, 0, &EventBody::FileVersion(FILE_VERSION));
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 0x00, 0x1a, 13]);
        want.extend_from_slice(b"brain.Event:2");
        assert_eq!(data, want);
        let framed = frame(&data);
        assert_eq!(&framed[..8], &(data.len() as u64).to_le_bytes());
        assert_eq!(framed.len(), data.len() + 16);
    }

    #[test]
    fn event_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalar("loss", 1, 0.5).unwrap();
        w.scalars(
            300,
            &[
                ("a/b".into(), -2.25),
                ("lr".into(), 1e-4),
                ("nan".into(), f32::NAN),
            ],
        )
        .unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let name = path.file_name().unwrap().to_str().unwrap();
        let rest = name.strip_prefix(FILE_PREFIX).unwrap();
        let (secs, host) = rest.split_once('.').unwrap();
        assert!(secs.parse::<u64>().unwrap() > 1_600_000_000, "{name}");
        assert!(!host.is_empty());
        assert_eq!(event_files(dir.path()).unwrap(), vec![path.clone()]);

        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        assert!(events[0].scalars.is_empty());
        assert_eq!(events[1].step, 1);
        assert_eq!(events[1].scalars, vec![("loss".to_string(), 0.5)]);
        assert_eq!(events[2].step, 300);
        assert_eq!(events[2].scalars[0], ("a/b".to_string(), -2.25));
        assert_eq!(events[2].scalars[1], ("lr".to_string(), 1e-4));
        assert!(events[2].scalars[2].1.is_nan());
        assert!(events.iter().all(|e| e.wall_time > 1.6e9));

        // A flipped byte in the data of the second record breaks its data CRC.
        let mut bytes = std::fs::read(&path).unwrap();
        let first_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let second = first_len + 16;
        bytes[second + 12] ^= 1;
        let bad = dir.path().join("bad");
        std::fs::write(&bad, &bytes).unwrap();
        let err = read_events(&bad).unwrap_err().to_string();
        assert!(err.contains("bad data CRC"), "{err}");
        // ... and one in its length, the length CRC.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second] ^= 1;
        std::fs::write(&bad, &bytes).unwrap();
        let err = read_events(&bad).unwrap_err().to_string();
        assert!(err.contains("bad length CRC"), "{err}");
    }

    #[test]
    fn logger_writes_steps_and_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let mut cb = TensorBoardLogger::new(dir.path());
        let logs = vec![("acc".to_string(), 0.75)];
        for s in 1..=3 {
            cb.on_train_step(&StepEnd {
                epoch: 0,
                global_step: s,
                loss: 1.0 / s as f64,
                lr: 0.1,
                loss_scale: Some(65536.0),
                seconds: 0.01,
                logs: &logs,
            })
            .unwrap();
        }
        let metrics: Row = [("val_loss".to_string(), 0.25), ("lr".to_string(), 0.1)].into();
        cb.on_epoch_end(
            &EpochEnd {
                epoch: 0,
                global_step: 3,
                metrics: &metrics,
                run_dir: Some(dir.path()),
            },
            &mut Actions::default(),
        )
        .unwrap();
        let events = read_events(cb.path().unwrap()).unwrap();
        assert_eq!(events.len(), 5);
        let tags: Vec<&str> = events[1].scalars.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            tags,
            [
                "step/loss",
                "step/lr",
                "step/seconds",
                "step/loss_scale",
                "step/acc"
            ]
        );
        assert_eq!(events[3].step, 3);
        assert_eq!(events[3].scalars[0], ("step/loss".to_string(), 1.0 / 3.0));
        assert_eq!(events[4].step, 3);
        assert!(
            events[4]
                .scalars
                .contains(&("epoch/val_loss".to_string(), 0.25))
        );
    }
}
