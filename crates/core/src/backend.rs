//! Backend selection at run time.
//!
//! Model code is generic over `B: Backend`; a command line picks the concrete backend once, at
//! the top, with `--device cpu|cuda[:N]|wgpu[:N]`. [`launch`] turns that choice into a call of a generic
//! [`BackendJob`] with the matching autodiff backend.
//!
//! CPU backends are cargo features: `flex` (pure-Rust, the default: it measured faster than
//! ndarray on every moola model, see docs/benchmarks.md) and `ndarray`. With both
//! compiled in, `cpu` means flex and `ndarray`/`flex` name one explicitly. CUDA is the `cuda`
//! feature; burn-wgpu (Vulkan on Linux and Windows, Metal on macOS; with kernel fusion and
//! autotuning) is the `wgpu` feature. Asking for a device whose backend was not compiled in, for
//! CUDA on a machine without a driver, or for wgpu on one without an adapter, is an ordinary
//! error.

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
    /// A wgpu adapter: `None` is burn-wgpu's default device (the most capable adapter, or the one
    /// `CUBECL_WGPU_DEFAULT_DEVICE` names), `Some(n)` the n-th adapter of [`wgpu_adapters`].
    Wgpu(Option<usize>),
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
            "wgpu" => Ok(Self::Wgpu(None)),
            other => {
                if let Some(index) = other.strip_prefix("cuda:") {
                    index
                        .parse()
                        .map(Self::Cuda)
                        .map_err(|_| format!("bad CUDA device index in `{s}`"))
                } else if let Some(index) = other.strip_prefix("wgpu:") {
                    index
                        .parse()
                        .map(|i| Self::Wgpu(Some(i)))
                        .map_err(|_| format!("bad wgpu adapter index in `{s}`"))
                } else {
                    Err(format!(
                        "unknown device `{s}`: expected cpu, cuda, cuda:N, wgpu, wgpu:N, ndarray \
                         or flex"
                    ))
                }
            }
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
            Self::Wgpu(None) => write!(f, "wgpu"),
            Self::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
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

/// The wgpu backend (f32 parameters), with burn-fusion and autotuning: `burn::backend::Wgpu`.
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Wgpu<f32, i32>;
/// burn-wgpu's device type.
#[cfg(feature = "wgpu")]
pub use burn::backend::wgpu::WgpuDevice;

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
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
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
        DeviceKind::Wgpu(index) => {
            #[cfg(feature = "wgpu")]
            {
                let device = wgpu_device(index)?;
                job.run::<Autodiff<WgpuBackend>>(device)
            }
            #[cfg(not(feature = "wgpu"))]
            {
                let _ = (job, index);
                bail!(
                    "this binary was built without wgpu support; rebuild with `--features wgpu` \
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
        DeviceKind::Wgpu(_) if !devices.is_empty() => {
            devices.iter().map(|&i| DeviceKind::Wgpu(Some(i))).collect()
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

/// What a tool's `doctor` prints about where it runs: the requested device, the
/// [`device_report`] and the CPU threads.
pub fn doctor_report(device: &DeviceKind) -> Vec<String> {
    let mut lines = vec![format!("requested device: {device}")];
    lines.extend(device_report());
    lines.push(format!(
        "CPU threads: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    lines
}

/// What `doctor` prints about the devices of this machine: the backends compiled in, the CUDA
/// driver, and the wgpu adapters (one line each, numbered as `--device wgpu:N` counts them).
pub fn device_report() -> Vec<String> {
    let mut lines = vec![format!(
        "backends compiled in: {}",
        compiled_backends().join(", ")
    )];
    lines.push(match cuda_available() {
        Ok(()) => "CUDA driver: found".to_string(),
        Err(_) => "CUDA driver: not found".to_string(),
    });
    if cfg!(feature = "wgpu") {
        let adapters = wgpu_adapters();
        if adapters.is_empty() {
            lines.push(
                "wgpu adapters: none found (`--device wgpu` needs a Vulkan driver; Mesa's \
                 lavapipe, Debian packages mesa-vulkan-drivers and libvulkan1, is a software one)"
                    .to_string(),
            );
        } else {
            lines.push(format!("wgpu adapters: {}", adapters.len()));
            for (i, a) in adapters.iter().enumerate() {
                lines.push(format!("  wgpu:{i}  {a}"));
            }
        }
    } else {
        lines.push("wgpu adapters: not listed (built without the `wgpu` feature)".to_string());
    }
    lines
}

/// One graphics adapter wgpu found, as `doctor` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    /// The adapter's name (e.g. `llvmpipe (LLVM 15.0.6, 256 bits)` for Mesa's lavapipe).
    pub name: String,
    /// discrete, integrated, virtual, cpu or other.
    pub device_type: String,
    /// The graphics API (vulkan, metal, …).
    pub api: String,
    /// Driver name and version.
    pub driver: String,
    /// Whether its shaders can compute in f16 (`16-mixed` needs it).
    pub shader_f16: bool,
}

impl fmt::Display for AdapterInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {}, driver {}, f16 {})",
            self.name,
            self.device_type,
            self.api,
            self.driver,
            if self.shader_f16 { "yes" } else { "no" }
        )
    }
}

/// The adapters burn-wgpu can open, in the order `--device wgpu:N` indexes them: those of the
/// graphics API burn-wgpu uses here (Metal on macOS, Vulkan elsewhere).
#[cfg(feature = "wgpu")]
pub fn wgpu_adapters() -> Vec<AdapterInfo> {
    raw_wgpu_adapters()
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            AdapterInfo {
                name: info.name,
                device_type: format!("{:?}", info.device_type).to_ascii_lowercase(),
                api: format!("{:?}", info.backend).to_ascii_lowercase(),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
                shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
            }
        })
        .collect()
}

/// Without the `wgpu` feature there are no adapters to list.
#[cfg(not(feature = "wgpu"))]
pub fn wgpu_adapters() -> Vec<AdapterInfo> {
    Vec::new()
}

#[cfg(feature = "wgpu")]
fn raw_wgpu_adapters() -> Vec<wgpu::Adapter> {
    let backends = if cfg!(target_os = "macos") {
        wgpu::Backends::METAL
    } else {
        wgpu::Backends::VULKAN
    };
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    block_on(instance.enumerate_adapters(backends))
}

/// Polls a future that native wgpu resolves at once (adapter enumeration) to completion.
#[cfg(feature = "wgpu")]
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

/// The burn-wgpu device for `--device wgpu[:N]`, after checking that an adapter exists, so that a
/// machine without one gets an error instead of a panic on burn-wgpu's device thread.
#[cfg(feature = "wgpu")]
pub fn wgpu_device(index: Option<usize>) -> Result<WgpuDevice> {
    let adapters = raw_wgpu_adapters();
    if adapters.is_empty() {
        bail!(
            "wgpu was requested but no {} adapter was found; install a GPU driver with Vulkan \
             support (or Mesa's software lavapipe: the Debian packages mesa-vulkan-drivers and \
             libvulkan1), or use `--device cpu`",
            if cfg!(target_os = "macos") {
                "Metal"
            } else {
                "Vulkan"
            }
        );
    }
    let Some(n) = index else {
        return Ok(WgpuDevice::DefaultDevice);
    };
    let Some(chosen) = adapters.get(n) else {
        bail!(
            "wgpu adapter {n} requested but only {} found ({}); `doctor` lists them",
            adapters.len(),
            adapters
                .iter()
                .map(|a| a.get_info().name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    // burn-wgpu addresses an adapter by its type and its index among the adapters of that type.
    let kind = chosen.get_info().device_type;
    let same_before = adapters[..n]
        .iter()
        .filter(|a| a.get_info().device_type == kind)
        .count();
    Ok(match kind {
        wgpu::DeviceType::DiscreteGpu => WgpuDevice::DiscreteGpu(same_before),
        wgpu::DeviceType::IntegratedGpu => WgpuDevice::IntegratedGpu(same_before),
        wgpu::DeviceType::VirtualGpu => WgpuDevice::VirtualGpu(same_before),
        wgpu::DeviceType::Cpu if same_before == 0 => WgpuDevice::Cpu,
        other => bail!(
            "wgpu adapter {n} ({}, type {other:?}) cannot be addressed by burn-wgpu; use \
             `--device wgpu` (its default device) or set CUBECL_WGPU_DEFAULT_DEVICE",
            chosen.get_info().name
        ),
    })
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
        assert_eq!(
            "wgpu".parse::<DeviceKind>().unwrap(),
            DeviceKind::Wgpu(None)
        );
        assert_eq!(
            "WGPU:1".parse::<DeviceKind>().unwrap(),
            DeviceKind::Wgpu(Some(1))
        );
        assert!("wgpu:x".parse::<DeviceKind>().is_err());
        assert_eq!(DeviceKind::Wgpu(Some(1)).to_string(), "wgpu:1");
        assert_eq!(DeviceKind::Wgpu(None).to_string(), "wgpu");
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

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn wgpu_without_feature_is_an_error() {
        struct Nothing;
        impl BackendJob for Nothing {
            type Output = ();
            fn run<B: AutodiffBackend>(self, _device: B::Device) -> Result<()> {
                Ok(())
            }
        }
        let err = launch(DeviceKind::Wgpu(None), Nothing).unwrap_err();
        assert!(err.to_string().contains("without wgpu"), "{err}");
        assert!(wgpu_adapters().is_empty());
    }
}
