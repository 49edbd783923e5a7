//! Where and in what precision the work runs: device and dtype parsing, threads, memory use.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .with_context(|| format!("bad CUDA ordinal in --device {s}"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {s}: this grasp binary was built without the `cuda` feature");
            }
            Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
        }
        other => bail!("unknown device `{other}` (expected cpu, cuda or cuda:N)"),
    }
}

/// Parses `f32`, `bf16` or `f16` (also `float32`, `bfloat16`, `float16`).
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => bail!("unknown dtype `{other}` (expected f32, bf16 or f16)"),
    }
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "other",
    }
}

/// The dtype to compute in when the user gave none: the checkpoint's own on CUDA (bf16 when it
/// is f32), f32 on the CPU, where half-precision matmuls are slow and gradients are our tests.
pub fn default_compute_dtype(device: &Device, checkpoint: DType) -> DType {
    match device {
        Device::Cpu => DType::F32,
        _ if checkpoint == DType::F32 => DType::BF16,
        _ => checkpoint,
    }
}

/// Threads of candle's matmuls, of grasp's element-wise kernels and of faer: rayon's pool
/// (the one this runs in).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

/// Memory the system can still give out (Linux `MemAvailable`), if known.
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A closed stdout (`grasp eval ... | head -n 1`) ends the process quietly, as it does other
/// command-line tools, instead of making the next print panic: Rust ignores SIGPIPE by
/// default, which turns the write into an error that `println!` panics on.
pub fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: resetting a signal's disposition to its default has no memory effects; it is
    // called before any thread writes to a pipe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Process settings that must precede the first candle op and the first thread; called first
/// thing by the binary and the benchmark.
///
/// Threads: candle runs its matmuls on rayon's global pool and its element-wise ops on a
/// second pool of its own, whose workers spin for a while after every op before they sleep.
/// In a gradient pass a GEMM follows nearly every element-wise op, so those spinning workers
/// take cores from the GEMM's threads: on 2 cores, 9% of a pass's CPU time went to spinning.
/// Unless CANDLE_NUM_THREADS says otherwise, that second pool gets no workers (candle's
/// element-wise ops run on the calling thread) and grasp's own element-wise kernels run on
/// rayon's pool beside the GEMMs: forward+backward from SmolLM2's layer 12 went from 204-225
/// to 240-267 tokens/s.
///
/// Memory: keeps glibc from handing the large activation buffers of each pass back to the OS
/// and faulting them in again on the next one (millions of page faults per gradient pass):
/// with these settings a SmolLM2 forward pass is about 30% faster. One arena for all threads:
/// with an arena per thread, and none of them trimmed, the concurrent gradient passes'
/// threads could not reuse what the main thread had freed (a 6-layer SmolLM2 compression
/// peaked at 1.7-1.9 GB instead of 1.4). mimalloc was tried and was slower on the backward
/// pass.
pub fn tune_process() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread starts.
    unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Bytes available to this user on the file system holding `path`; None where unknown.
pub fn free_disk_bytes(path: &std::path::Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c_path` is NUL-terminated and `st` is written by statvfs before it is read.
        let st = unsafe {
            if libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) != 0 {
                return None;
            }
            st.assume_init()
        };
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// How many passes (of calibration batches, of micro-batches) run at once: one per thread, as
/// long as there are `jobs` for them and their graphs of `pass_bytes` each fit in half of the
/// `available` memory (one pass when that is unknown).
pub fn passes_that_fit(
    threads: usize,
    jobs: usize,
    pass_bytes: usize,
    available: Option<u64>,
) -> usize {
    let fit = available.map_or(1, |free| (free / 2 / pass_bytes.max(1) as u64) as usize);
    threads.min(jobs).min(fit).max(1)
}

/// `job(0..jobs)` on `workers` threads, each job on one thread with a one-thread rayon pool
/// of its own, so that the GEMMs and kernels inside it run serially; results in job order.
/// After a failure, no new job starts and the first error is returned.
pub fn single_threaded_in_parallel<T: Send>(
    jobs: usize,
    workers: usize,
    job: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..jobs).map(|_| None).collect());
    let work = || -> Result<()> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .context("cannot start a gradient-pass thread")?;
        pool.install(|| loop {
            let n = next.fetch_add(1, Ordering::Relaxed);
            if n >= jobs || failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            match job(n) {
                Ok(r) => results.lock().unwrap_or_else(PoisonError::into_inner)[n] = Some(r),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        })
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers).map(|_| s.spawn(work)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a gradient-pass thread panicked"))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    results
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .into_iter()
        .map(|r| r.context("a gradient pass did not run"))
        .collect()
}
