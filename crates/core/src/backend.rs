//! Backend selection at run time.
//!
//! Model code is generic over `B: Backend`; a command line picks the concrete backend once, at
//! the top, with `--device cpu|cuda[:N]`. [`launch`] turns that choice into a call of a generic
//! [`BackendJob`] with the matching autodiff backend.
//!
//! CPU backends are cargo features: `flex` (pure-Rust, the default: it measured faster than
//! ndarray on every moola model, see docs/benchmarks.md) and `ndarray`. With both
//! compiled in, `cpu` means flex and `ndarray`/`flex` name one explicitly. CUDA is the `cuda`
//! feature. Asking for a device whose backend was not compiled in, or for CUDA on a machine
//! without a driver, is an ordinary error.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use burn::tensor::backend::AutodiffBackend;

/// Which device (and so which backend) a command runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum DeviceKind {
    /// The default CPU backend of this build.
    #[default]
    Cpu,
    /// The burn-ndarray CPU backend.
    NdArray,
    /// The burn-flex CPU backend.
    Flex,
    /// A CUDA GPU by index.
    Cuda(usize),
}

impl DeviceKind {
    /// `Cpu` replaced by the concrete CPU backend of this build (`Flex` when compiled in, else
    /// `NdArray`); other kinds unchanged.
    pub fn resolve(self) -> Self {
        match self {
            Self::Cpu if cfg!(feature = "flex") => Self::Flex,
            Self::Cpu if cfg!(feature = "ndarray") => Self::NdArray,
            other => other,
        }
    }
}

impl FromStr for DeviceKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "ndarray" | "cpu:ndarray" => Ok(Self::NdArray),
            "flex" | "cpu:flex" => Ok(Self::Flex),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(index) => index
                    .parse()
                    .map(Self::Cuda)
                    .map_err(|_| format!("bad CUDA device index in `{s}`")),
                None => Err(format!(
                    "unknown device `{s}`: expected cpu, cuda, cuda:N, ndarray or flex"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::NdArray => write!(f, "ndarray"),
            Self::Flex => write!(f, "flex"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A computation generic over the autodiff backend, run by [`launch`].
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs the job on `device` of backend `B`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output>;
}

/// The burn-ndarray CPU backend.
#[cfg(feature = "ndarray")]
pub use burn::backend::NdArray;
/// Burn's autodiff backend decorator, from kiln's fork of burn-autodiff 0.21.0
/// (`vendor/burn-autodiff`, see its `FIX.md`). Use this rather than `burn::backend::Autodiff`:
/// kiln's custom backward ops and the data-parallel trainer are built for this one.
pub use burn_autodiff::Autodiff;
/// The pure-Rust CPU backend, from kiln's fork of burn-flex 0.21.0 (`vendor/burn-flex`, see its
/// `FIX.md`: the fast kernels kiln's benchmarks measure). Use this rather than
/// `burn::backend::Flex`, which is the unpatched crate and misses `kiln::fused`'s kernels.
#[cfg(feature = "flex")]
pub use burn_flex::Flex;
/// The forked crates themselves, for code that extends them (custom backward steps, kernels).
pub mod forks {
    pub use burn_autodiff as autodiff;
    pub use burn_collective as collective;
    #[cfg(feature = "flex")]
    pub use burn_flex as flex;
}

/// The CPU backend used for `cpu` in this build.
#[cfg(feature = "flex")]
pub type CpuBackend = Flex;
/// The CPU backend used for `cpu` in this build.
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type CpuBackend = NdArray;

/// The CUDA backend (f32 parameters).
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda<f32, i32>;

/// Names of the backends compiled into this binary, for `doctor` output.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "flex") {
        v.push("flex");
    }
    if cfg!(feature = "ndarray") {
        v.push("ndarray");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// Runs `job` on the backend that `kind` names.
pub fn launch<J: BackendJob>(kind: DeviceKind, job: J) -> Result<J::Output> {
    match kind {
        DeviceKind::Cpu => {
            #[cfg(any(feature = "flex", feature = "ndarray"))]
            {
                job.run::<Autodiff<CpuBackend>>(Default::default())
            }
            #[cfg(not(any(feature = "flex", feature = "ndarray")))]
            {
                let _ = job;
                bail!("this binary was built without a CPU backend (features `flex` or `ndarray`)")
            }
        }
        DeviceKind::Flex => {
            #[cfg(feature = "flex")]
            {
                job.run::<Autodiff<Flex>>(Default::default())
            }
            #[cfg(not(feature = "flex"))]
            {
                let _ = job;
                bail!("this binary was built without the `flex` feature")
            }
        }
        DeviceKind::NdArray => {
            #[cfg(feature = "ndarray")]
            {
                job.run::<Autodiff<NdArray>>(Default::default())
            }
            #[cfg(not(feature = "ndarray"))]
            {
                let _ = job;
                bail!("this binary was built without the `ndarray` feature")
            }
        }
        DeviceKind::Cuda(index) => {
            #[cfg(feature = "cuda")]
            {
                cuda_available()?;
                let device = burn::backend::cuda::CudaDevice { index };
                job.run::<Autodiff<CudaBackend>>(device)
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = (job, index);
                bail!(
                    "this binary was built without CUDA support; rebuild with `--features cuda` \
                     or use `--device cpu`"
                )
            }
        }
    }
}

/// A job that can run as one worker of a data-parallel run: it gets the worker handle (or
/// `None` on a single device) next to its device. Each worker runs its own copy of the job.
pub trait DistJob: Clone + Send + 'static {
    /// What the job returns.
    type Output: Send + 'static;
    /// Runs one worker on `device` of backend `B`.
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        dist: Option<crate::dist::Dist>,
    ) -> Result<Self::Output>;
}

struct Worker<J> {
    job: J,
    dist: Option<(crate::dist::DistConfig, usize)>,
}

impl<J: DistJob> BackendJob for Worker<J> {
    type Output = J::Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<J::Output> {
        let dist = match &self.dist {
            Some((cfg, local_rank)) => Some(crate::dist::Dist::init::<B::InnerBackend>(
                cfg,
                *local_rank,
                &device,
            )?),
            None => None,
        };
        self.job.run::<B>(device, dist)
    }
}

/// Runs `job` on one device, or, with a data-parallel configuration, as one worker thread per
/// local device of this node (`devices`: CUDA indices, or on CPU just a count of workers).
/// Returns the output of this node's first worker; any worker's error is the run's error.
pub fn launch_workers<J: DistJob>(
    kind: DeviceKind,
    devices: &[usize],
    dist: Option<crate::dist::DistConfig>,
    job: J,
) -> Result<J::Output> {
    let Some(cfg) = dist else {
        return launch(kind, Worker { job, dist: None });
    };
    cfg.validate()?;
    let locals: Vec<DeviceKind> = match kind {
        DeviceKind::Cuda(_) if !devices.is_empty() => {
            devices.iter().map(|&i| DeviceKind::Cuda(i)).collect()
        }
        other => vec![other; cfg.devices_per_node.max(1)],
    };
    if locals.len() != cfg.devices_per_node {
        bail!(
            "{} devices listed for {} workers per node",
            locals.len(),
            cfg.devices_per_node
        );
    }
    let shared = locals.len() > 1;
    let handles: Vec<_> = locals
        .into_iter()
        .enumerate()
        .map(|(local_rank, device)| {
            let worker = Worker {
                job: job.clone(),
                dist: Some((cfg.clone(), local_rank)),
            };
            std::thread::Builder::new()
                .name(format!("worker-{local_rank}"))
                .spawn(move || {
                    // Several workers in one process: random draws stay off the backends'
                    // process-wide generators (see `kiln::seed`).
                    let _worker = shared.then(crate::seed::worker_guard);
                    launch(device, worker)
                })
        })
        .collect::<std::io::Result<_>>()?;
    let mut first = None;
    let mut error = None;
    for (local_rank, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(out)) => {
                if first.is_none() {
                    first = Some(out);
                }
            }
            Ok(Err(e)) => {
                error.get_or_insert(e.context(format!("worker {local_rank} failed")));
            }
            Err(_) => {
                error.get_or_insert(anyhow::anyhow!("worker {local_rank} panicked"));
            }
        }
    }
    match (error, first) {
        (Some(e), _) => Err(e),
        (None, Some(out)) => Ok(out),
        (None, None) => bail!("no worker ran"),
    }
}

/// Checks that the CUDA driver library can be loaded, so that a missing driver is a clear error
/// instead of a panic on one of Burn's device threads.
pub fn cuda_available() -> Result<()> {
    // SAFETY: loading the CUDA driver runs its initialisers, which is what using it would do anyway.
    match unsafe { libloading::Library::new("libcuda.so.1") } {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "CUDA was requested but no NVIDIA driver could be loaded ({e}); \
             use `--device cpu` on machines without a GPU"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceKind>().unwrap(), DeviceKind::Cpu);
        assert_eq!("CUDA".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda(0));
        assert_eq!("cuda:2".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda(2));
        assert_eq!(
            "ndarray".parse::<DeviceKind>().unwrap(),
            DeviceKind::NdArray
        );
        assert!("tpu".parse::<DeviceKind>().is_err());
        assert!("cuda:x".parse::<DeviceKind>().is_err());
        assert_eq!(DeviceKind::Cuda(1).to_string(), "cuda:1");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_an_error() {
        struct Nothing;
        impl BackendJob for Nothing {
            type Output = ();
            fn run<B: AutodiffBackend>(self, _device: B::Device) -> Result<()> {
                Ok(())
            }
        }
        let err = launch(DeviceKind::Cuda(0), Nothing).unwrap_err();
        assert!(err.to_string().contains("without CUDA"), "{err}");
    }
}
