//! Command-line arguments every kiln-based tool shares.

use anyhow::{Result, bail};
use clap::Args;

use crate::amp::Precision;
use crate::backend::DeviceKind;
use crate::dist::DistConfig;
use crate::trainer::Strategy;

/// Device, precision, data-parallel and progress options, flattened into each tool's top-level
/// parser (Lightning's `Trainer(accelerator, devices, num_nodes, strategy, precision)`).
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Device: cpu (default backend of this build), ndarray, flex, cuda or cuda:N.
    #[arg(long, global = true, default_value = "cpu")]
    pub device: DeviceKind,
    /// Hide progress bars.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Numeric precision of training: 32, 16-mixed or bf16-mixed (default: the configuration's).
    #[arg(long, global = true)]
    pub precision: Option<Precision>,
    /// single-device or ddp (default: ddp when more than one device or node is given).
    #[arg(long, global = true)]
    pub strategy: Option<Strategy>,
    /// Devices of this node for data-parallel training, e.g. `0,1`: CUDA indices with
    /// `--device cuda`; on CPU one worker per entry.
    #[arg(long, global = true, value_delimiter = ',')]
    pub devices: Vec<usize>,
    /// Nodes (processes) of a multi-node run.
    #[arg(long, global = true, default_value_t = 1)]
    pub num_nodes: usize,
    /// This node's rank, 0..num_nodes.
    #[arg(long, global = true, default_value_t = 0)]
    pub node_rank: usize,
    /// HOST:PORT of the orchestrator of a multi-node run (node 0 starts it unless
    /// --external-orchestrator).
    #[arg(long, global = true, default_value = "127.0.0.1:29500")]
    pub orchestrator: String,
    /// The orchestrator is run elsewhere; node 0 does not start one.
    #[arg(long, global = true)]
    pub external_orchestrator: bool,
    /// This node's data-service port (default: orchestrator port + 1 + node rank).
    #[arg(long, global = true, default_value_t = 0)]
    pub data_port: u16,
    /// Seconds a collective may wait for a peer before the run stops with an error.
    #[arg(long, global = true, default_value_t = 120.0)]
    pub dist_timeout: f64,
}

impl RuntimeArgs {
    /// Whether to draw progress bars.
    pub fn progress(&self) -> bool {
        !self.quiet
    }

    /// Devices of this node (at least one).
    pub fn local_devices(&self) -> Vec<usize> {
        if !self.devices.is_empty() {
            return self.devices.clone();
        }
        match self.device {
            DeviceKind::Cuda(i) => vec![i],
            _ => vec![0],
        }
    }

    /// The data-parallel configuration these flags ask for, or `None` for one device.
    pub fn dist_config(&self) -> Result<Option<DistConfig>> {
        let devices = self.local_devices().len();
        let parallel = devices > 1 || self.num_nodes > 1;
        match self.strategy {
            Some(Strategy::SingleDevice) if parallel => bail!(
                "--strategy single-device contradicts {devices} devices × {} nodes",
                self.num_nodes
            ),
            Some(Strategy::SingleDevice) => return Ok(None),
            None if !parallel => return Ok(None),
            Some(Strategy::Ddp) if !parallel => {
                tracing::warn!(
                    "--strategy ddp with one device and one node: training on one device"
                );
                return Ok(None);
            }
            _ => {}
        }
        let cfg = DistConfig {
            num_nodes: self.num_nodes,
            node_rank: self.node_rank,
            devices_per_node: devices,
            orchestrator: self.orchestrator.clone(),
            start_orchestrator: !self.external_orchestrator,
            data_port: self.data_port,
            timeout_secs: self.dist_timeout,
        };
        cfg.validate()?;
        Ok(Some(cfg))
    }
}

/// Restores the default `SIGPIPE` behaviour so that `tool | head` ends the tool quietly instead
/// of panicking on a closed standard output (Rust ignores `SIGPIPE` by default). Call it first
/// thing in `main`.
pub fn reset_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
