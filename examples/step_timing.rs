//! Times LoRA training steps on a random-weight checkpoint at a realistic shape, for
//! benches/compare_peft.sh (which runs the same step in PyTorch + PEFT on the same files).
//!
//! ```text
//! cargo run --release --example step_timing -- write DIR ARCH SHAPE   # ARCH: llama|gpt_neox|gpt2
//! cargo run --release --example step_timing -- time DIR STEPS WARMUP [SEQ [SHARD]]  # one JSON line
//! cargo run --release --example step_timing -- serve DIR WARMUP [SEQ [SHARD]]  # a step per stdin line
//! cargo run --release --example step_timing -- kernel SHAPE [head]    # the gemm kernel alone
//! cargo run --release --example step_timing -- peak                   # the cores' f32 FMA ceiling
//! ```
//!
//! SHAPE is tiny (4 x 128, vocab 2048), 14m (Pythia-14M), 70m-body (Pythia-70M's blocks, vocab
//! 2048), 70m (Pythia-70M) or 160m (Pythia-160M). `kernel` times the `gemm` crate itself at the
//! largest matrix product in the shape's blocks (the weight stored (out, in) as in a
//! checkpoint; the output head is left out, see `Shape::largest_block_matmul`; `kernel SHAPE
//! head` measures the head's product alone), on the
//! threads RAYON_NUM_THREADS allows, per shard as the engine multiplies and as one product:
//! the better of the two is the rate the engine's step is measured against. On a GPU:
//!
//! ```text
//! PLASTICITY_DEVICE=cuda target/cuda/release/examples/step_timing time DIR 5 2
//! ```
//!
//! The batch is 8 x 128 tokens (1,024 tokens in sequences of SEQ when it is given, trained in
//! shards of SHARD tokens when that is given, else `train::shard::shard_tokens` of its width), r = 8 on PEFT's default targets
//! (every linear layer with `STEP_TARGETS=all-linear`), AdamW, f32, on the threads
//! RAYON_NUM_THREADS allows. Timing starts after WARMUP steps and reads the clock after
//! synchronising the device. Built with `--features matmul-stats`, `time` also prints every
//! matrix product of the timed steps by shape to stderr, with its rate per thread.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use plasticity::curve::median;
use plasticity::lora::{AdapterInit, LoraSpec, Targets};
use plasticity::matmul::{product, Mat};
use plasticity::synth::{write_checkpoint, Shape};
use plasticity::train::optim::AdamWConfig;
use plasticity::train::shard::shard_tokens;
use plasticity::train::{Batch, TrainSpec, Trainer};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Tokens per step, and the default sequence length (a batch of 8).
const TOKENS: usize = 1024;
const SEQ: usize = 128;

fn main() -> Res<()> {
    plasticity::memory::keep_freed_memory();
    let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|t| t.parse().ok());
    plasticity::device::configure_cpu_threads(threads.unwrap_or_else(rayon::current_num_threads));
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["write", dir, arch, shape] => write(Path::new(dir), arch, shape),
        ["time", dir, steps, warmup, rest @ ..] if rest.len() <= 2 => {
            let (seq, shard) = seq_and_shard(rest)?;
            time(Path::new(dir), Drive::Steps(steps.parse()?), warmup.parse()?, seq, shard)
        }
        ["serve", dir, warmup, rest @ ..] if rest.len() <= 2 => {
            let (seq, shard) = seq_and_shard(rest)?;
            time(Path::new(dir), Drive::Stdin, warmup.parse()?, seq, shard)
        }
        ["matmul"] => matmul(),
        ["peak"] => peak(),
        ["kernel", name] => {
            let s = shape(name)?;
            kernel(s.largest_block_matmul(TOKENS), shard_tokens(s.hidden))
        }
        ["kernel", name, "head"] => {
            let s = shape(name)?;
            kernel(s.head_matmul(TOKENS), shard_tokens(s.hidden))
        }
        _ => Err(
            "usage: step_timing write DIR ARCH SHAPE | time DIR STEPS WARMUP [SEQ [SHARD]] | serve DIR WARMUP [SEQ [SHARD]] | kernel SHAPE [head] | peak | matmul"
                .into(),
        ),
    }
}

/// The machine's f32 matmul rate through candle's CPU backend: square 1024 and the LM-head
/// shape (1024 tokens x 512 hidden x 50304 vocab), with the weight stored transposed as in a model.
fn matmul() -> Res<()> {
    for (m, k, n) in [(1024, 1024, 1024), (1024, 512, 50304), (1024, 128, 50304)] {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        for (label, b) in [("contiguous", w.t()?.contiguous()?), ("transposed", w.t()?)] {
            a.matmul(&b)?;
            let t = Instant::now();
            let reps = 3;
            for _ in 0..reps {
                a.matmul(&b)?;
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{{\"m\": {m}, \"k\": {k}, \"n\": {n}, \"rhs\": \"{label}\", \"gflops\": {:.1}}}",
                2.0 * (m * k * n) as f64 / s / 1e9
            );
        }
    }
    Ok(())
}

/// The optional SEQ and SHARD arguments of `time` and `serve`.
fn seq_and_shard(rest: &[&str]) -> Res<(usize, Option<usize>)> {
    let seq = rest.first().map_or(Ok(SEQ), |s| s.parse())?;
    Ok((seq, rest.get(1).map(|s| s.parse()).transpose()?))
}

fn shape(name: &str) -> Res<Shape> {
    Shape::named(name).ok_or_else(|| format!("unknown shape {name} (tiny, 14m, 70m-body, 70m, 160m)").into())
}

fn write(dir: &Path, arch: &str, name: &str) -> Res<()> {
    Ok(write_checkpoint(dir, arch, shape(name)?, 0)?)
}

/// The `gemm` crate's f32 rate at the product (m, k, n), y = x w^T with w stored (n, k) as in
/// a checkpoint: the largest product in the shape's blocks, or with `head` the output head's.
/// Measured two ways on the threads RAYON_NUM_THREADS allows, each the median of 7 runs after
/// one:
/// - `shard_gflops`: as the engine multiplies, each thread its own shard of `shard` rows (the
///   engine's shard for the model's width)
///   on one core, all threads at once;
/// - `whole_gflops`: the whole batch of 1,024 rows as one product split over the threads.
///
/// `gflops`, the rate the step is measured against, is the better of the two.
fn kernel((m, k, n): (usize, usize, usize), shard: usize) -> Res<()> {
    let threads = rayon::current_num_threads();
    let shard = shard.min(m);
    let x: Vec<f32> = (0..m * k).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
    let w: Vec<f32> = (0..n * k).map(|i| ((i % 89) as f32 - 44.0) / 89.0).collect();
    let w_t = Mat { data: &w, rows: n, cols: k, rs: k, cs: 1 }.t(); // (k, n), strided
    let per_shard = || -> Res<()> {
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..threads)
                .map(|_| s.spawn(|| product(Mat::rows(&x[..shard * k], shard, k), w_t, 1.0, 1).map(drop)))
                .collect();
            runs.into_iter().try_for_each(|r| r.join().map_err(|_| "a kernel thread panicked".to_string())?)
        })?;
        Ok(())
    };
    let whole = || -> Res<()> { Ok(product(Mat::rows(&x, m, k), w_t, 1.0, threads).map(drop)?) };
    let rate = |flops: f64, run: &dyn Fn() -> Res<()>| -> Res<f64> {
        let mut times = Vec::new();
        for _ in 0..8 {
            let t = Instant::now();
            run()?;
            times.push(t.elapsed().as_secs_f64());
        }
        Ok(flops / median(&times[1..]) / 1e9)
    };
    let sharded = rate(2.0 * (threads * shard * k * n) as f64, &per_shard)?;
    let whole = rate(2.0 * (m * k * n) as f64, &whole)?;
    println!(
        "{{\"m\": {m}, \"k\": {k}, \"n\": {n}, \"threads\": {threads}, \"shard\": {shard}, \"gflops\": {:.1}, \"shard_gflops\": {sharded:.1}, \"whole_gflops\": {whole:.1}}}",
        sharded.max(whole)
    );
    Ok(())
}

/// The f32 rate no matrix product can pass on this CPU: every thread RAYON_NUM_THREADS allows
/// runs 12 independent chains of 8-wide fused multiply-adds (AVX2 + FMA; as many chains as the
/// gemm crate's AVX2 micro-kernel keeps), all at once, for about 0.2 s, seven times; prints the
/// median and the best of the summed rates. Where the CPU has AVX-512F, the same with 16-wide
/// chains as `avx512_gflops`: as high as the AVX2 rate where a core splits each 512-bit FMA in
/// two halves, up to twice it where it runs them at full width.
fn peak() -> Res<()> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        let (gflops, best) = summed_rates(8, fma_chains);
        print!("{{\"threads\": {}, \"gflops\": {gflops:.1}, \"best_gflops\": {best:.1}", rayon::current_num_threads());
        if std::is_x86_feature_detected!("avx512f") {
            print!(", \"avx512_gflops\": {:.1}", summed_rates(16, fma_chains_512).0);
        }
        println!("}}");
        return Ok(());
    }
    Err("peak: needs an x86-64 CPU with AVX2 and FMA".into())
}

/// The median and best of seven summed rates of `chains` (12 chains of `width`-wide FMAs, for
/// ITERS rounds) run on every thread at once.
#[cfg(target_arch = "x86_64")]
fn summed_rates(width: usize, chains: fn(usize) -> f32) -> (f64, f64) {
    const ITERS: usize = 4_000_000;
    let threads = rayon::current_num_threads();
    let mut rates = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..threads).map(|_| s.spawn(|| chains(ITERS))).collect();
            runs.into_iter().for_each(|h| drop(h.join()));
        });
        rates.push((threads * ITERS * 12 * width * 2) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    (median(&rates), rates.iter().copied().fold(0.0, f64::max))
}

/// `iters` rounds of 12 independent 8-wide FMAs; returns a lane so the work is not optimised out.
/// Panics on a CPU without AVX2 and FMA (`peak` checks first).
#[cfg(target_arch = "x86_64")]
fn fma_chains(iters: usize) -> f32 {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run(iters: usize) -> f32 {
        use std::arch::x86_64::*;
        let (b, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, b, c);
            }
        }
        let sum = acc.iter().fold(_mm256_setzero_ps(), |s, a| _mm256_add_ps(s, *a));
        _mm256_cvtss_f32(sum)
    }
    assert!(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"));
    // SAFETY: the CPU has AVX2 and FMA (checked just above)
    unsafe { run(iters) }
}

/// [`fma_chains`] 16 wide; panics on a CPU without AVX-512F.
#[cfg(target_arch = "x86_64")]
fn fma_chains_512(iters: usize) -> f32 {
    #[target_feature(enable = "avx512f")]
    unsafe fn run(iters: usize) -> f32 {
        use std::arch::x86_64::*;
        let (b, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); 12];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, b, c);
            }
        }
        _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, *a)))
    }
    assert!(std::is_x86_feature_detected!("avx512f"));
    // SAFETY: the CPU has AVX-512F (checked just above)
    unsafe { run(iters) }
}

/// `PLASTICITY_DEVICE` (cpu, cuda, cuda:N, auto), cpu when unset.
fn device() -> Res<Device> {
    Ok(plasticity::device::parse(&std::env::var("PLASTICITY_DEVICE").unwrap_or_else(|_| "cpu".into()))?)
}

/// A fixed batch of ids below min(vocab, 50,000) (the same formula the Python helper uses),
/// in sequences of `seq`.
fn batch(dev: &Device, vocab: usize, seq: usize) -> Res<Batch> {
    let ids: Vec<u32> = (0..TOKENS).map(|i| ((i * 7919 + 13) % vocab.min(50000)) as u32).collect();
    let ids = Tensor::from_vec(ids, (TOKENS / seq, seq), dev)?;
    let labels = ids.ones_like()?.to_dtype(DType::F32)?;
    Ok(Batch { ids, labels })
}

/// How the timed steps are asked for: a fixed number, or one per line on stdin (`serve`).
enum Drive {
    Steps(usize),
    Stdin,
}

fn time(dir: &Path, drive: Drive, warmup: usize, seq: usize, shard: Option<usize>) -> Res<()> {
    if seq == 0 || !TOKENS.is_multiple_of(seq) {
        return Err(format!("SEQ must divide {TOKENS}").into());
    }
    let start = Instant::now();
    let dev = device()?;
    let targets = match std::env::var("STEP_TARGETS").as_deref() {
        Ok("all-linear") => Targets::AllLinear,
        Ok(other) => return Err(format!("STEP_TARGETS={other}: only all-linear is known").into()),
        Err(_) => Targets::Default,
    };
    let spec = LoraSpec { targets, ..LoraSpec::default() };
    let model = plasticity::model::load(dir, &spec, &AdapterInit::Seeded(0), 0, &dev)?;
    let spec = TrainSpec {
        optimizer: AdamWConfig::default(),
        warmup_steps: 0,
        max_grad_norm: 1.0,
        batch_size: TOKENS / seq,
        grad_accum: 1,
        steps: match drive {
            Drive::Steps(n) => n,
            Drive::Stdin => usize::MAX,
        },
        eval_every: 0,
        timing_warmup: warmup,
    };
    let mut trainer = Trainer::new(&model, &spec)?;
    if let Some(tokens) = shard {
        trainer = trainer.with_shard_tokens(tokens);
    }
    let b = batch(&dev, model.vocab_size, seq)?;
    let load_s = start.elapsed().as_secs_f64();
    let mut step = || -> Res<f64> {
        dev.synchronize()?;
        let t = Instant::now();
        trainer.step(std::slice::from_ref(&b))?;
        dev.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    for _ in 0..warmup {
        step()?;
    }
    #[cfg(feature = "matmul-stats")]
    plasticity::matmul::stats::reset();
    let times = match drive {
        Drive::Steps(n) => (0..n).map(|_| step()).collect::<Res<Vec<_>>>()?,
        Drive::Stdin => serve(&mut step)?,
    };
    if times.is_empty() {
        return Err("no step was timed".into());
    }
    #[cfg(feature = "matmul-stats")]
    plasticity::matmul::stats::report(&mut std::io::stderr())?;
    let step_s = median(&times);
    let (peak, bound) =
        (peak_rss_bytes().unwrap_or(0) as f64 / 1e6, memory_bound_bytes(dir, model.n_params, seq)? / 1e6);
    println!(
        "{{\"stack\": \"plasticity\", \"device\": \"{:?}\", \"kernels\": \"{}\", \"model_type\": \"{}\", \"params\": {}, \"load_s\": {load_s:.3}, \"median_step_s\": {step_s:.4}, \"tokens_per_s\": {:.1}, \"achieved_gflops\": {:.1}, \"peak_rss_mb\": {peak:.0}, \"bound_mb\": {bound:.0}, \"peak_over_bound\": {:.2}}}",
        dev.location(),
        plasticity::isa::kernels().name(),
        model.model_type,
        model.n_params,
        TOKENS as f64 / step_s,
        TOKENS as f64 / step_s * model.flops_per_token(seq) / 1e9,
        peak / bound
    );
    Ok(())
}

/// After warm-up: prints `ready`, then answers each line read from stdin with one step's
/// seconds, until stdin closes (benches/interleave_peft.py alternates two such processes).
fn serve(step: &mut dyn FnMut() -> Res<f64>) -> Res<Vec<f64>> {
    use std::io::Write;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut times = Vec::new();
    for line in std::io::stdin().lines() {
        line?;
        times.push(step()?);
        writeln!(out, "{:.6}", times[times.len() - 1])?;
        out.flush()?;
    }
    Ok(times)
}

/// The process's peak resident memory (Linux VmHWM).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What one LoRA step needs resident, in bytes: the model's f32 weights plus one step's
/// activations as `plasticity::train::activation_bytes` estimates them (the same estimate a
/// scan checks against the memory available before loading a checkpoint).
fn memory_bound_bytes(dir: &Path, params: usize, seq: usize) -> Res<f64> {
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    Ok(4.0 * params as f64 + plasticity::train::activation_bytes(&cfg, TOKENS / seq, seq) as f64)
}
