//! Data-parallel collectives: the workers of a run find each other and all-reduce tensors.
//!
//! Built on [`burn_collective`] 0.21 (vendored with fixes, see below).
//!
//! # Topology
//!
//! * **One process per node** (machine, or just a process on a shared machine). Processes are
//!   numbered by [`DistConfig::node_rank`] in `0..num_nodes`.
//! * **One worker thread per device** inside a process ([`DistConfig::devices_per_node`]; `1` on
//!   CPU). Each thread calls [`Dist::init`] with its `local_rank` and owns the returned [`Dist`].
//!   Its global rank is `node_rank * devices_per_node + local_rank`; rank 0 is the *main* worker.
//! * **An orchestrator** (a websocket server at [`DistConfig::orchestrator`], `HOST:PORT`) that
//!   introduces the nodes to each other. Node 0 starts it inside its own process when
//!   [`DistConfig::start_orchestrator`] is set; it then lives as long as that process (node 0's
//!   [`Dist::finish`] waits until every node has said goodbye to it).
//! * **A data service per node** (a websocket server on [`DistConfig::data_port`]) through which
//!   the nodes exchange tensor slices directly (ring all-reduce). It listens on all interfaces;
//!   the other nodes reach it at this machine's address on the orchestrator's network (the
//!   orchestrator's host when that is a loopback address, otherwise the local address of the
//!   route to the orchestrator; set `KILN_DIST_NODE_HOST` to override).
//!
//! Inside a process the device threads reduce through shared memory first; across processes one
//! tensor per node travels. Every call is collective: all workers must make the same calls, in
//! the same order, with tensors of the same shape. A process runs its collectives strictly one
//! after another (the transfers have fixed ids per operation), so do not call them concurrently
//! from clones of one handle.
//!
//! Each operation costs a few websocket round trips (about 0.5 ms for 1k `f32` on loopback), so
//! [`Dist::all_reduce_grads`] flattens *all* gradients into one buffer and reduces it with one
//! call per step instead of one per parameter.
//!
//! With a world size of 1 nothing is started and every operation is the identity.
//!
//! # Failures
//!
//! A collective that does not complete within [`DistConfig::timeout_secs`] (a peer died, hangs or
//! is unreachable) returns an error instead of hanging; so does registration at [`Dist::init`]
//! (all nodes must join within the timeout). After any collective failure the process-wide
//! collective state is unusable: every later call fails at once, and the process should save
//! nothing more and exit (its last checkpoint is untouched).
//!
//! # The vendored burn-collective
//!
//! `vendor/burn-collective` is burn-collective 0.21.0 with three changes (see its `FIX.md`):
//! the second multi-node all-reduce of a process hung forever (the node-sync step cleared a copy
//! of its list of synced peers instead of the list), a lost-wakeup race in the same step could
//! hang any all-reduce, and a new orchestrator entry point installs no Ctrl-C/SIGTERM handlers
//! (the stock one made a training process ignore them) and reports the registered nodes.
//!
//! # Launching two nodes on 127.0.0.1
//!
//! ```no_run
//! use kiln::backend::Flex;
//! use kiln::dist::{Dist, DistConfig, Reduce};
//!
//! # fn main() -> anyhow::Result<()> {
//! // Run this program twice, with node rank 0 and 1 (e.g. from a command-line flag).
//! let node_rank: usize = std::env::args().nth(1).unwrap_or_default().parse()?;
//! let cfg = DistConfig {
//!     num_nodes: 2,
//!     node_rank,
//!     devices_per_node: 1,
//!     orchestrator: "127.0.0.1:29500".into(),
//!     start_orchestrator: true, // only node 0 acts on it
//!     data_port: 0,             // 29501 + node_rank
//!     timeout_secs: 60.0,
//! };
//! let device = Default::default();
//! let dist = Dist::init::<Flex>(&cfg, 0, &device)?;
//! let x = burn::tensor::Tensor::<Flex, 1>::from_floats([dist.rank() as f32], &device);
//! let mean = dist.all_reduce(x, Reduce::Mean)?; // 0.5 on both nodes
//! # let _ = mean;
//! dist.finish()?;
//! # Ok(())
//! # }
//! ```
//!
//! With several devices per node, spawn one thread per device, each calling [`Dist::init`] with
//! its `local_rank` and its device (use the inner, non-autodiff backend: the collectives of
//! [`Dist::all_reduce_grads`] run on `B::InnerBackend`).

/// Keeping data-parallel replicas identical.
pub mod sync;

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Device, Tensor, TensorPrimitive};
use burn_collective::{
    AllReduceStrategy, CollectiveConfig, CollectiveError, OrchestratorMonitor, PeerId,
    ReduceOperation,
};
use serde::{Deserialize, Serialize};

/// Environment variable overriding the host name or IP address under which the other nodes
/// reach this node's data service.
pub const NODE_HOST_ENV: &str = "KILN_DIST_NODE_HOST";

/// Default `tracing` filter installed by [`Dist::init`] when no subscriber is set yet: `info`,
/// but burn-collective's per-transfer messages only from `warn` up.
pub const QUIET_LOGS: &str = "info,burn_communication=warn,burn_collective=warn";

/// How the workers of a data-parallel run find each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DistConfig {
    /// Number of processes (nodes).
    pub num_nodes: usize,
    /// This process, in `0..num_nodes`.
    pub node_rank: usize,
    /// Worker threads per process, one per device (1 on CPU).
    pub devices_per_node: usize,
    /// `HOST:PORT` of the global orchestrator (websocket; a `ws://` prefix is accepted). Unused
    /// with one node.
    pub orchestrator: String,
    /// Node 0 starts the orchestrator itself (on the orchestrator's port, all interfaces) when
    /// true; otherwise it must be running elsewhere.
    pub start_orchestrator: bool,
    /// This node's data-service port (0: orchestrator port + 1 + `node_rank`).
    pub data_port: u16,
    /// A collective (or the registration of all nodes) that does not finish in this many
    /// seconds is an error.
    pub timeout_secs: f64,
}

impl Default for DistConfig {
    /// One node, one device, orchestrator `127.0.0.1:29500` started by node 0, 60 s timeout.
    fn default() -> Self {
        Self {
            num_nodes: 1,
            node_rank: 0,
            devices_per_node: 1,
            orchestrator: "127.0.0.1:29500".into(),
            start_orchestrator: true,
            data_port: 0,
            timeout_secs: 60.0,
        }
    }
}

impl DistConfig {
    /// Total number of workers: `num_nodes * devices_per_node`.
    pub fn world_size(&self) -> usize {
        self.num_nodes.saturating_mul(self.devices_per_node)
    }

    /// Checks the configuration: ranks in range, at least one device, a positive finite
    /// timeout, and (with several nodes) a `HOST:PORT` orchestrator address and free-of-clash
    /// ports.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.num_nodes >= 1, "dist: num_nodes must be at least 1");
        ensure!(
            self.node_rank < self.num_nodes,
            "dist: node_rank {} is out of range for {} node(s) (expected 0..{})",
            self.node_rank,
            self.num_nodes,
            self.num_nodes
        );
        ensure!(
            self.devices_per_node >= 1,
            "dist: devices_per_node must be at least 1"
        );
        ensure!(
            u32::try_from(self.world_size()).is_ok()
                && self.num_nodes.checked_mul(self.devices_per_node).is_some(),
            "dist: world size {} x {} is too large",
            self.num_nodes,
            self.devices_per_node
        );
        ensure!(
            self.timeout_secs.is_finite() && self.timeout_secs > 0.0,
            "dist: timeout_secs must be a positive number of seconds, not {}",
            self.timeout_secs
        );
        if self.num_nodes > 1 {
            let (_, port) = self.orchestrator_host_port()?;
            let data_port = self.node_data_port()?;
            ensure!(
                !(self.node_rank == 0 && self.start_orchestrator && data_port == port),
                "dist: node 0's data port {data_port} is the orchestrator's port"
            );
        }
        Ok(())
    }

    /// The orchestrator's host and port, parsed from [`orchestrator`](Self::orchestrator).
    fn orchestrator_host_port(&self) -> Result<(String, u16)> {
        let raw = self.orchestrator.trim();
        let addr = raw.strip_prefix("ws://").unwrap_or(raw);
        let bad = || {
            anyhow!(
                "dist: cannot parse the orchestrator address `{}`: expected HOST:PORT, e.g. \
                 127.0.0.1:29500",
                self.orchestrator
            )
        };
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ensure!(
            port != 0
                && !host.is_empty()
                && !host.contains(['/', ' ', '@', '?', '#'])
                && (!host.contains(':') || host.parse::<IpAddr>().is_ok()),
            bad()
        );
        Ok((host.to_string(), port))
    }

    /// This node's data-service port: [`data_port`](Self::data_port), or the orchestrator port
    /// + 1 + `node_rank` when that is 0.
    fn node_data_port(&self) -> Result<u16> {
        if self.data_port != 0 {
            return Ok(self.data_port);
        }
        let (_, port) = self.orchestrator_host_port()?;
        usize::from(port)
            .checked_add(1 + self.node_rank)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| {
                anyhow!(
                    "dist: the default data port {port} + 1 + {} is out of range; set data_port",
                    self.node_rank
                )
            })
    }

    /// The orchestrator's websocket URL.
    fn orchestrator_url(&self) -> Result<String> {
        let (host, port) = self.orchestrator_host_port()?;
        Ok(format!("ws://{}:{port}", bracket(&host)))
    }
}

/// A reduction of [`Dist::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reduce {
    /// Element-wise sum over all workers.
    Sum,
    /// Element-wise mean over all workers.
    Mean,
}

impl From<Reduce> for ReduceOperation {
    fn from(r: Reduce) -> Self {
        match r {
            Reduce::Sum => ReduceOperation::Sum,
            Reduce::Mean => ReduceOperation::Mean,
        }
    }
}

/// One worker's handle (one per device thread). Cheap to clone; clones share the worker.
///
/// Dropping the last clone finishes the worker like [`Dist::finish`] (errors are logged).
#[derive(Clone)]
pub struct Dist {
    inner: Arc<Inner>,
}

struct Inner {
    rank: usize,
    world_size: usize,
    node_rank: usize,
    num_nodes: usize,
    peer: PeerId,
    /// No collective at all (world size 1).
    solo: bool,
    /// The backend the worker registered with, and its name.
    backend: TypeId,
    backend_name: &'static str,
    timeout: Duration,
    orchestrator: String,
    /// `burn_collective::finish_collective::<B>`, for `finish`/drop without the type.
    finish_fn: fn(PeerId) -> Result<(), CollectiveError>,
    /// The orchestrator hosted by this process, if any.
    hosted: Option<OrchestratorMonitor>,
    /// Not registered yet, or finished: no collective may run (and none to finish).
    finished: AtomicBool,
    /// Serialises the collectives of clones of this handle.
    op_lock: Mutex<()>,
}

impl fmt::Debug for Dist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dist")
            .field("rank", &self.inner.rank)
            .field("world_size", &self.inner.world_size)
            .field("node_rank", &self.inner.node_rank)
            .field("orchestrator", &self.inner.orchestrator)
            .finish_non_exhaustive()
    }
}

/// Set once a collective failed in this process: burn-collective's state is then unusable.
static BROKEN: Mutex<Option<String>> = Mutex::new(None);

fn broken() -> Option<String> {
    BROKEN.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn set_broken(why: &str) {
    let mut b = BROKEN.lock().unwrap_or_else(|e| e.into_inner());
    if b.is_none() {
        *b = Some(why.to_string());
    }
}

impl Dist {
    /// Registers this worker (rank `node_rank * devices_per_node + local_rank`) with the
    /// collective, on `device` of backend `B`; returns once every worker of the run has
    /// registered. Node 0 first starts the orchestrator when
    /// [`start_orchestrator`](DistConfig::start_orchestrator) is set.
    ///
    /// Use the backend the collectives will run on: the inner (non-autodiff) backend.
    pub fn init<B: Backend>(
        cfg: &DistConfig,
        local_rank: usize,
        device: &B::Device,
    ) -> Result<Self> {
        cfg.validate()?;
        ensure!(
            local_rank < cfg.devices_per_node,
            "dist: local_rank {local_rank} is out of range for {} device(s) per node",
            cfg.devices_per_node
        );
        let rank = cfg.node_rank * cfg.devices_per_node + local_rank;
        let world_size = cfg.world_size();
        let timeout = Duration::from_secs_f64(cfg.timeout_secs);
        let solo = world_size == 1;
        let orchestrator = if cfg.num_nodes > 1 {
            cfg.orchestrator_url()?
        } else {
            "(none: one node)".to_string()
        };
        let mut inner = Inner {
            rank,
            world_size,
            node_rank: cfg.node_rank,
            num_nodes: cfg.num_nodes,
            peer: PeerId::from(rank),
            solo,
            backend: TypeId::of::<B>(),
            backend_name: std::any::type_name::<B>(),
            timeout,
            orchestrator,
            finish_fn: burn_collective::finish_collective::<B>,
            hosted: None,
            finished: AtomicBool::new(true),
            op_lock: Mutex::new(()),
        };
        if solo {
            return Ok(Self {
                inner: Arc::new(inner),
            });
        }
        if let Some(why) = broken() {
            bail!(
                "dist: cannot register rank {rank}: an earlier collective of this process failed \
                 ({why})"
            );
        }
        if !tracing::dispatcher::has_been_set() {
            // burn-communication would otherwise install its own subscriber, printing every
            // transfer at INFO level to stdout.
            crate::train::progress::init_logging(QUIET_LOGS);
        }

        let mut config = CollectiveConfig::default().with_num_devices(cfg.devices_per_node);
        if cfg.num_nodes > 1 {
            let (host, port) = cfg.orchestrator_host_port()?;
            let data_port = cfg.node_data_port()?;
            if cfg.node_rank == 0 && cfg.start_orchestrator {
                inner.hosted = Some(ensure_orchestrator(port).with_context(|| {
                    format!("dist: node 0 cannot start the orchestrator on port {port}")
                })?);
            }
            ensure_data_port_free(data_port).with_context(|| {
                format!("dist: rank {rank} of {world_size} cannot serve its tensors")
            })?;
            let deadline = Instant::now() + timeout;
            wait_for_orchestrator(&host, port, deadline).with_context(|| {
                format!(
                    "dist: rank {rank} of {world_size} cannot reach the orchestrator at {}",
                    inner.orchestrator
                )
            })?;
            let node_host = node_host(&host, port)?;
            let node_url = format!("ws://{}:{data_port}", bracket(&node_host));
            let bad = |url: &str, e: String| anyhow!("dist: bad address {url}: {e}");
            config = config
                .with_num_nodes(
                    u32::try_from(cfg.num_nodes).context("dist: too many nodes for u32")?,
                )
                .with_global_address(
                    inner
                        .orchestrator
                        .parse()
                        .map_err(|e| bad(&inner.orchestrator, e))?,
                )
                .with_node_address(node_url.parse().map_err(|e| bad(&node_url, e))?)
                .with_data_service_port(data_port)
                // Centralized, not Ring: with the trainer's mix of all-reduces (small flag vectors
                // between gradient buffers) the 0.21 ring lost a transfer in its second phase
                // ("Peer closed download connection") on 2 nodes. For the node counts of this
                // project the centralized reduce costs the same.
                .with_global_all_reduce_strategy(AllReduceStrategy::Centralized);
        }
        let dist = Self {
            inner: Arc::new(inner),
        };
        let peer = dist.inner.peer;
        let device = device.clone();
        dist.guarded(true, "registration of all workers", move || {
            burn_collective::register::<B>(peer, device, config)
        })?;
        dist.inner.finished.store(false, Ordering::SeqCst);
        Ok(dist)
    }

    /// Global rank: `node_rank * devices_per_node + local_rank`.
    pub fn rank(&self) -> usize {
        self.inner.rank
    }

    /// Number of workers in the run.
    pub fn world_size(&self) -> usize {
        self.inner.world_size
    }

    /// Whether this is rank 0 (the worker that logs and writes checkpoints).
    pub fn is_main(&self) -> bool {
        self.inner.rank == 0
    }

    /// All-reduces a 1-D tensor over all workers (the same length everywhere). `B` must be the
    /// backend given to [`Dist::init`].
    pub fn all_reduce<B: Backend>(&self, t: Tensor<B, 1>, op: Reduce) -> Result<Tensor<B, 1>> {
        if self.inner.solo {
            return Ok(t);
        }
        self.check_backend::<B>()?;
        let n = t.dims()[0];
        if n == 0 {
            return Ok(t);
        }
        // The ring all-reduce between nodes cuts the tensor in one slice per node.
        let min_len = self.inner.num_nodes;
        let t = if n < min_len {
            let pad = Tensor::<B, 1>::zeros([min_len - n], &t.device()).cast(t.dtype());
            Tensor::cat(vec![t, pad], 0)
        } else {
            t
        };
        let primitive = t.into_primitive().tensor();
        let peer = self.inner.peer;
        let out = self.guarded(false, "all-reduce", move || {
            burn_collective::all_reduce::<B>(peer, primitive, op.into())
        })?;
        let out = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(out));
        Ok(if n < min_len { out.slice(0..n) } else { out })
    }

    /// Sums a few numbers over all workers (metrics, counters, flags). They travel as `f32`:
    /// exact for integers up to 2^24, otherwise about 7 significant digits.
    pub fn all_reduce_f64<B: Backend>(
        &self,
        values: &[f64],
        device: &B::Device,
    ) -> Result<Vec<f64>> {
        if self.inner.solo || values.is_empty() {
            return Ok(values.to_vec());
        }
        let data: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let t = Tensor::<B, 1>::from_floats(data.as_slice(), device);
        let out = self.all_reduce(t, Reduce::Sum)?;
        let out = out
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow!("dist: cannot read the reduced values: {e:?}"))?;
        Ok(out.into_iter().map(f64::from).collect())
    }

    /// Checks that every worker holds the same `fingerprint` (e.g. a hash of the configuration);
    /// on a mismatch every worker gets an error naming `what`.
    ///
    /// The fingerprint is hashed to 64 bits (FNV-1a) and cut in 4-bit chunks `c`; one all-reduce
    /// sums `c`, `c²` and a count of 1. The chunks are all equal iff `Σc = n·c` and `Σc² = n·c²`
    /// (exact in `f32` for up to 74 565 workers), and the count is the world size.
    pub fn agree<B: Backend>(
        &self,
        what: &str,
        fingerprint: &[u8],
        device: &B::Device,
    ) -> Result<()> {
        if self.inner.solo {
            return Ok(());
        }
        let hash = fnv1a(fingerprint);
        let chunks: Vec<f32> = (0..16).map(|i| ((hash >> (4 * i)) & 0xf) as f32).collect();
        let mut data = chunks.clone();
        data.extend(chunks.iter().map(|c| c * c));
        data.push(1.0);
        let sums = self.all_reduce_f64::<B>(
            &data.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            device,
        )?;
        let n = self.inner.world_size as f64;
        let count = sums[32];
        ensure!(
            count == n,
            "dist: {count} workers answered the check of {what}, expected the world size {n}"
        );
        let same = chunks.iter().enumerate().all(|(i, &c)| {
            let c = f64::from(c);
            sums[i] == n * c && sums[16 + i] == n * c * c
        });
        ensure!(
            same,
            "dist: the workers disagree on {what} (rank {} of {} has fingerprint {hash:016x}; \
             compare the other ranks' logs)",
            self.inner.rank,
            self.inner.world_size
        );
        Ok(())
    }

    /// Replaces every gradient in `grads` by its mean over all workers, with one all-reduce.
    ///
    /// The gradients of the trainable parameters of `model` (visit order) are flattened into
    /// one `f32` buffer of `B::InnerBackend`, followed by one presence flag per parameter. A
    /// worker without a gradient for a parameter contributes zeros (as in PyTorch's DDP); the
    /// mean is still over all workers, and the parameter gets a gradient when any worker had
    /// one. Gradients are registered back with their shapes and dtypes. `B::InnerBackend` must
    /// be the backend given to [`Dist::init`].
    pub fn all_reduce_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: &M,
        grads: &mut GradientsParams,
    ) -> Result<()> {
        if self.inner.solo {
            return Ok(());
        }
        self.check_backend::<B::InnerBackend>()?;

        struct Collect<'a, B: AutodiffBackend> {
            grads: &'a mut GradientsParams,
            device: Option<Device<B::InnerBackend>>,
            /// (gradient if present, length), in visit order
            parts: Vec<(Option<Tensor<B::InnerBackend, 1>>, usize)>,
            /// id → (offset, length, dtype, index of the presence flag)
            layout: HashMap<ParamId, (usize, usize, DType, usize)>,
            len: usize,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if self.layout.contains_key(&param.id) {
                    return; // a shared parameter, already collected
                }
                let value = param.val();
                if !value.is_require_grad() {
                    return;
                }
                let n = value.shape().num_elements();
                let mut dtype = value.dtype();
                let part = self.grads.remove::<B::InnerBackend, D>(param.id).map(|g| {
                    if self.device.is_none() {
                        self.device = Some(g.device());
                    }
                    dtype = g.dtype();
                    g.reshape([n]).cast(DType::F32)
                });
                let index = self.parts.len();
                self.layout.insert(param.id, (self.len, n, dtype, index));
                self.parts.push((part, n));
                self.len += n;
            }
        }
        let mut collect = Collect::<B> {
            grads,
            device: None,
            parts: Vec::new(),
            layout: HashMap::new(),
            len: 0,
        };
        model.visit(&mut collect);
        let Collect {
            grads,
            device,
            parts,
            layout,
            len,
        } = collect;
        if parts.is_empty() {
            return Ok(());
        }
        // A worker with no gradient at all still takes part: use the model's device.
        let device = match device {
            Some(d) => d,
            None => model_device::<B, M>(model)?,
        };
        let mut flags = Vec::with_capacity(parts.len());
        let mut pieces = Vec::with_capacity(parts.len() + 1);
        for (part, n) in parts {
            flags.push(if part.is_some() { 1.0f32 } else { 0.0 });
            pieces.push(part.unwrap_or_else(|| {
                Tensor::<B::InnerBackend, 1>::zeros([n], &device).cast(DType::F32)
            }));
        }
        pieces.push(
            Tensor::<B::InnerBackend, 1>::from_floats(flags.as_slice(), &device).cast(DType::F32),
        );
        let flat = Tensor::cat(pieces, 0);
        let flat = self.all_reduce(flat, Reduce::Mean)?;
        let present = flat
            .clone()
            .slice(len..len + flags.len())
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow!("dist: cannot read the gradient flags: {e:?}"))?;

        struct Assign<'a, B: AutodiffBackend> {
            grads: &'a mut GradientsParams,
            flat: Tensor<B::InnerBackend, 1>,
            layout: HashMap<ParamId, (usize, usize, DType, usize)>,
            present: Vec<f32>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Assign<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let Some((offset, n, dtype, index)) = self.layout.remove(&param.id) else {
                    return;
                };
                if self.present[index] <= 0.0 {
                    return;
                }
                let shape = param.val().shape();
                let g = self
                    .flat
                    .clone()
                    .slice(offset..offset + n)
                    .cast(dtype)
                    .reshape(shape);
                self.grads.register::<B::InnerBackend, D>(param.id, g);
            }
        }
        let mut assign = Assign::<B> {
            grads,
            flat,
            layout,
            present,
        };
        model.visit(&mut assign);
        Ok(())
    }

    /// Leaves the collective (clean shutdown). Node 0, when it hosts the orchestrator, then
    /// waits until every node has left, so that its process can exit (at most 10 s, and at most
    /// the timeout). Other clones of this handle become unusable. Does nothing after a
    /// collective failure, nor for a world size of 1.
    pub fn finish(self) -> Result<()> {
        self.inner.finish()
    }

    fn check_backend<B: Backend>(&self) -> Result<()> {
        ensure!(
            TypeId::of::<B>() == self.inner.backend,
            "dist: collective called with backend {} but rank {} registered with {} (use the \
             inner, non-autodiff backend everywhere)",
            std::any::type_name::<B>(),
            self.inner.rank,
            self.inner.backend_name
        );
        Ok(())
    }

    /// Runs one burn-collective call on a helper thread, waiting at most the timeout
    /// (`registering`: the call is the registration, before which the worker is inactive).
    fn guarded<T, F>(&self, registering: bool, what: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, CollectiveError> + Send + 'static,
    {
        let inner = &self.inner;
        let _lock = inner.op_lock.lock().unwrap_or_else(|e| e.into_inner());
        let who = format!(
            "rank {} of {} (node {} of {}, orchestrator {})",
            inner.rank, inner.world_size, inner.node_rank, inner.num_nodes, inner.orchestrator
        );
        if inner.finished.load(Ordering::SeqCst) && !registering {
            bail!("dist: {what} on {who} after finish");
        }
        if let Some(why) = broken() {
            bail!("dist: {what} on {who} is impossible: an earlier collective failed ({why})");
        }
        let result = run_with_timeout(inner.timeout, f);
        let err = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => format!("{what} failed on {who}: {}", describe(&e)),
            Err(Failure::Panic(msg)) => format!(
                "{what} failed on {who}: the collective service stopped ({msg}); a peer probably \
                 disconnected"
            ),
            Err(Failure::Timeout) => format!(
                "{what} did not complete within {} s on {who}: a peer stopped or is unreachable",
                fmt_secs(inner.timeout)
            ),
        };
        set_broken(&err);
        Err(anyhow!("dist: {err}; the last checkpoint is untouched"))
    }
}

/// The longest [`Dist::finish`] waits for burn-collective and, on the orchestrator's host, for
/// the other nodes to leave (also bounded by the timeout). The nodes run in lockstep, so they
/// normally all finish within milliseconds; this only bounds exits after a failure elsewhere.
const FINISH_LIMIT: Duration = Duration::from_secs(10);

impl Inner {
    fn finish(&self) -> Result<()> {
        if self.solo || self.finished.swap(true, Ordering::SeqCst) || broken().is_some() {
            return Ok(());
        }
        let limit = self.timeout.min(FINISH_LIMIT);
        let peer = self.peer;
        let finish = self.finish_fn;
        let who = format!("rank {} of {}", self.rank, self.world_size);
        match run_with_timeout(limit, move || finish(peer)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("dist: finishing {who} failed: {}", describe(&e)),
            Err(Failure::Panic(msg)) => bail!("dist: finishing {who} failed: {msg}"),
            Err(Failure::Timeout) => {
                set_broken("finish timed out");
                bail!(
                    "dist: finishing {who} did not complete within {} s (has the orchestrator \
                     {} stopped?)",
                    fmt_secs(limit),
                    self.orchestrator
                )
            }
        }
        if let Some(monitor) = &self.hosted {
            // Keep the orchestrator (and so this process) up until every node has left.
            let deadline = Instant::now() + limit;
            while monitor.registered_nodes() > 0 {
                if Instant::now() > deadline {
                    bail!(
                        "dist: {} node(s) did not leave the orchestrator within {} s of node 0",
                        monitor.registered_nodes(),
                        fmt_secs(limit)
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!("{e:#}");
        }
    }
}

enum Failure {
    Timeout,
    Panic(String),
}

/// Runs `f` on a new thread and waits for it at most `timeout` (the thread is left behind on a
/// timeout); a panic is caught and returned.
fn run_with_timeout<T, F>(timeout: Duration, f: F) -> Result<T, Failure>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("kiln-dist-op".into())
        .spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into())
            });
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return Err(Failure::Panic(format!("cannot spawn a thread: {e}")));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(msg)) => Err(Failure::Panic(msg)),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Failure::Timeout),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(Failure::Panic("the collective thread vanished".into()))
        }
    }
}

/// A readable account of a burn-collective error.
fn describe(e: &CollectiveError) -> String {
    // The global errors' type is not nameable outside burn-collective: match on its name.
    let debug = format!("{e:?}");
    let global = |name: &str| debug.starts_with(&format!("Global({name}"));
    if matches!(e, CollectiveError::LocalServerMissing) {
        "the collective service of this process stopped (a peer probably disconnected)".into()
    } else if matches!(e, CollectiveError::RegisterParamsMismatch)
        || global("RegisterParamsMismatch")
    {
        "the workers registered with different settings (num_nodes / devices_per_node)".into()
    } else if matches!(e, CollectiveError::AllReduceShapeMismatch) {
        "the workers of this process passed tensors of different lengths".into()
    } else if global("PeerLost") {
        format!("lost the connection to a peer node ({debug})")
    } else if global("PeerSentIncoherentTensor") {
        "a peer sent a tensor of another length (do all workers reduce the same model?)".into()
    } else if global("OrchestratorUnreachable") {
        "the orchestrator is unreachable".into()
    } else if global("DoubleRegister") {
        "two nodes registered with the same data address (same node_rank or data_port?)".into()
    } else {
        debug
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

/// `[host]` for IPv6 literals in URLs.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// 64-bit FNV-1a: a hash that is the same in every process and Rust version.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The device of the first float parameter of `model` (on the inner backend).
pub fn model_device<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
) -> Result<Device<B::InnerBackend>> {
    struct First<B: AutodiffBackend>(Option<Device<B::InnerBackend>>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for First<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.0.is_none() {
                self.0 = Some(param.val().inner().device());
            }
        }
    }
    let mut first = First::<B>(None);
    model.visit(&mut first);
    first
        .0
        .ok_or_else(|| anyhow!("dist: the model has no float parameter"))
}

/// The orchestrators this process hosts, by port.
static ORCHESTRATORS: OnceLock<Mutex<HashMap<u16, OrchestratorMonitor>>> = OnceLock::new();

/// Starts the orchestrator on `port` (all interfaces) on a background thread with its own
/// runtime, unless this process already runs one there; returns once it accepts connections.
fn ensure_orchestrator(port: u16) -> Result<OrchestratorMonitor> {
    let mut running = ORCHESTRATORS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(m) = running.get(&port) {
        return Ok(m.clone());
    }
    let monitor = OrchestratorMonitor::default();
    let (tx, rx) = mpsc::channel::<String>();
    let m = monitor.clone();
    std::thread::Builder::new()
        .name("kiln-orchestrator".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(format!("cannot start its runtime: {e}"));
                    return;
                }
            };
            // Runs for the life of the process.
            let served =
                runtime.block_on(burn_collective::start_global_orchestrator_with_shutdown(
                    port,
                    std::future::pending(),
                    m,
                ));
            let why = match served {
                Err(e) => format!("{e:?}"),
                Ok(()) => "it stopped".into(),
            };
            tracing::error!("dist: the orchestrator on port {port} stopped: {why}");
            let _ = tx.send(why);
        })
        .context("cannot spawn the orchestrator thread")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(why) = rx.try_recv() {
            bail!("the orchestrator failed: {why} (is port {port} in use?)");
        }
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .is_ok()
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the orchestrator does not accept connections on port {port}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    running.insert(port, monitor.clone());
    Ok(monitor)
}

/// Data ports this process has already checked (its local workers share one data service).
static DATA_PORTS: OnceLock<Mutex<std::collections::HashSet<u16>>> = OnceLock::new();

/// Checks, once per process and port, that this node's data service can listen on `port`.
/// burn-collective binds it in a background task and only logs a failure, so a port taken by
/// another program (or by an outgoing connection's ephemeral port) would otherwise surface as a
/// registration that never completes.
fn ensure_data_port_free(port: u16) -> Result<()> {
    let mut checked = DATA_PORTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if checked.contains(&port) {
        return Ok(());
    }
    std::net::TcpListener::bind(("0.0.0.0", port)).with_context(|| {
        format!(
            "the data port {port} is in use (choose another with --data-port, e.g. one below \
             the ephemeral range {}-{})",
            ephemeral_ports().0,
            ephemeral_ports().1
        )
    })?;
    checked.insert(port);
    Ok(())
}

/// The range the OS draws outgoing connections' local ports from (Linux:
/// `/proc/sys/net/ipv4/ip_local_port_range`; elsewhere the IANA range 49152-65535).
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
            match (it.next(), it.next()) {
                (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
                _ => None,
            }
        })
        .unwrap_or((49152, 65535))
}

/// `n` distinct ports that nothing listens on now, for an orchestrator and data services on
/// this machine. They are drawn at random from below the ephemeral range, so that an outgoing
/// connection opened meanwhile (e.g. a worker reaching the orchestrator) cannot take one before
/// the service that was given it binds it (a port from binding port 0 can, since it is itself
/// ephemeral).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    use rand::Rng;
    let (lo, _) = ephemeral_ports();
    let (min, max) = (10_000u16, lo.max(10_100));
    let mut rng = rand::rng();
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n.saturating_mul(200).max(200) {
        if ports.len() == n {
            break;
        }
        let p = rng.random_range(min..max);
        if !ports.contains(&p)
            && std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        {
            ports.push(p);
        }
    }
    ensure!(
        ports.len() == n,
        "dist: found only {} of {n} free ports in {min}-{max}",
        ports.len()
    );
    Ok(ports)
}

/// Waits until the orchestrator accepts TCP connections (burn-collective would otherwise retry
/// once a second, forever).
fn wait_for_orchestrator(host: &str, port: u16, deadline: Instant) -> Result<()> {
    loop {
        let addrs: Vec<_> = (host, port)
            .to_socket_addrs()
            .map(|a| a.collect())
            .unwrap_or_default();
        for addr in &addrs {
            if TcpStream::connect_timeout(addr, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            if addrs.is_empty() {
                bail!("cannot resolve host `{host}`");
            }
            bail!("nothing accepts connections on {host}:{port} (is node 0 running?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The host under which the other nodes reach this node's data service.
fn node_host(orchestrator_host: &str, port: u16) -> Result<String> {
    if let Ok(h) = std::env::var(NODE_HOST_ENV)
        && !h.trim().is_empty()
    {
        return Ok(h.trim().to_string());
    }
    let loopback = orchestrator_host == "localhost"
        || orchestrator_host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return Ok(orchestrator_host.to_string());
    }
    // The local address of the route to the orchestrator (no packet is sent).
    let local = (orchestrator_host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .and_then(|target| {
            let bind = if target.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let socket = UdpSocket::bind(bind).ok()?;
            socket.connect(target).ok()?;
            socket.local_addr().ok()
        });
    match local {
        Some(addr) => Ok(addr.ip().to_string()),
        None => bail!(
            "dist: cannot find this node's address on the way to the orchestrator \
             {orchestrator_host}:{port}; set {NODE_HOST_ENV}"
        ),
    }
}
