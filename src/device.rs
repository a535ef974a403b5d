//! Devices by name: `--device`/`--devices` values parsed into candle devices, the labels and
//! hardware names reports and progress lines show, and the sizing of the CPU kernels' thread
//! pools (`configure_cpu_threads`, once per process). A CPU build refuses CUDA by name with a
//! reason; this module never trains and never decides which device a snapshot runs on.

use candle_core::{Device, DeviceLocation};

use crate::error::{Error, Result};

/// A device named as `--device` names it (cpu, cuda, cuda:N or auto), opened; for callers
/// that read the name from elsewhere (the examples' `PLASTICITY_DEVICE`). A CPU build refuses
/// cuda by name; auto falls back to the CPU, saying why when this build could have used a GPU.
pub fn parse(value: &str) -> Result<Device> {
    device_for("--device", value)
}

/// A device as the command line names it, before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    /// The first GPU when this build has CUDA support and one is usable, else the CPU.
    Auto,
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    /// `cpu`, `cuda` (GPU 0), `cuda:N` or `auto`.
    fn from_str(value: &str) -> std::result::Result<Self, String> {
        match value {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            v => v
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("{v:?} is not cpu, cuda, cuda:N or auto")),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

/// Opens the device `spec` names; `flag` is the flag it came from, for the message.
pub fn open(flag: &'static str, spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => Ok(auto_device()),
        DeviceSpec::Cuda(ordinal) => cuda_device(ordinal).map_err(|why| Error::flag(flag, format!("{spec}: {why}"))),
    }
}

fn device_for(flag: &'static str, value: &str) -> Result<Device> {
    let spec: DeviceSpec = value.parse().map_err(|why| Error::flag(flag, why))?;
    open(flag, spec)
}

/// `--devices`: a comma-separated list of cpu, cuda or cuda:N (not auto: a worker per device
/// must be a device).
pub fn parse_list(value: &str) -> Result<Vec<Device>> {
    let names: Vec<&str> = value.split(',').map(str::trim).collect();
    if names.iter().any(|n| n.is_empty() || *n == "auto") {
        return Err(Error::flag(
            "--devices",
            format!("{value:?}: give a list of cpu, cuda or cuda:N, such as cuda:0,cuda:1"),
        ));
    }
    let devices: Vec<Device> = names.iter().map(|n| device_for("--devices", n)).collect::<Result<_>>()?;
    if devices.iter().any(|d| d.is_cpu()) && devices.iter().any(|d| !d.is_cpu()) {
        return Err(Error::flag(
            "--devices",
            format!("{value:?} mixes the CPU and GPUs, whose timings cannot be ranked together"),
        ));
    }
    Ok(devices)
}

fn auto_device() -> Device {
    if !cfg!(feature = "cuda") {
        return Device::Cpu;
    }
    cuda_device(0).unwrap_or_else(|why| {
        eprintln!("warning: --device auto: no usable GPU ({why}); running on the CPU");
        Device::Cpu
    })
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> std::result::Result<Device, String> {
    Device::new_cuda(ordinal).map_err(|e| crate::error::one_line(&e))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> std::result::Result<Device, String> {
    Err("this plasticity was built without CUDA support (scripts/build-cuda.sh builds one with it)".into())
}

/// The CPU's model name with the kernel family its products run on ("Intel(R) Xeon(R)
/// Processor (avx512 kernels)": the family decides the products' rounding, `crate::isa`), or
/// the GPU's with its ordinal: "NVIDIA H200 (cuda:0)".
pub fn name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cuda { gpu_id } => {
            format!("{} (cuda:{gpu_id})", gpu_name(device).unwrap_or_else(|| "unknown GPU".into()))
        }
        _ => format!("{} ({} kernels)", cpu_model().unwrap_or_else(|| "cpu".into()), crate::isa::kernels().name()),
    }
}

/// /proc/cpuinfo's first "model name".
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
}

#[cfg(feature = "cuda")]
fn gpu_name(device: &Device) -> Option<String> {
    device.as_cuda_device().ok()?.cuda_stream().context().name().ok()
}

#[cfg(not(feature = "cuda"))]
fn gpu_name(_device: &Device) -> Option<String> {
    None
}

/// cpu, or cuda:N.
pub fn label(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        candle_core::DeviceLocation::Cpu => "cpu".into(),
    }
}

/// Sizes the CPU kernels' thread pools to `threads`. Rayon's pool runs the shards of a batch
/// (`train::shard`), the gemm kernel and the fused kernels. candle's own elementwise pool gets
/// no workers unless `CANDLE_NUM_THREADS` is set: the shards already keep every thread busy, and
/// its workers spinning after each operation took the cores the next matrix product needed
/// (BENCHMARKS.md, "Where a step spends its time"); when it is set, they park at once unless
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set too. Call it before any tensor operation: the pools
/// are built on first use.
pub fn configure_cpu_threads(threads: usize) {
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
}
