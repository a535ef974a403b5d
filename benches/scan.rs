//! The costs around the training steps: loading a checkpoint up to the end of its first
//! update (time to first step), and a whole small scan through the command's own code path.
//!
//!     cargo bench --bench scan

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use criterion::{criterion_group, criterion_main, Criterion};
use plasticity::cli::{Cli, Command};
use plasticity::discover;
use plasticity::lora::{AdapterInit, LoraSpec};
use plasticity::model;
use plasticity::options::ScanOptions;
use plasticity::report::Reports;
use plasticity::runner::Scan;
use plasticity::synth::{write_checkpoint, Shape};
use plasticity::train::optim::AdamWConfig;
use plasticity::train::{Batch, TrainSpec, Trainer};

fn spec() -> TrainSpec {
    TrainSpec {
        optimizer: AdamWConfig::default(),
        warmup_steps: 0,
        max_grad_norm: 1.0,
        batch_size: 8,
        grad_accum: 1,
        steps: 1,
        eval_every: 0,
        timing_warmup: 0,
    }
}

fn batch() -> Batch {
    let ids: Vec<u32> = (0..8 * 128).map(|i| ((i * 7919 + 13) % 50000 + 1) as u32).collect();
    let ids = Tensor::from_vec(ids, (8, 128), &Device::Cpu).expect("ids");
    let labels = ids.ones_like().and_then(|t| t.to_dtype(DType::F32)).expect("labels");
    Batch { ids, labels }
}

/// Open (memory-map, convert to f32, build adapters) and run one update, per shape.
fn time_to_first_step(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("time_to_first_step");
    group.sample_size(10);
    for (name, shape) in [("pythia14m_gpt_neox", Shape::PYTHIA_14M), ("pythia70m_gpt_neox", Shape::PYTHIA_70M)] {
        let path = dir.path().join(name);
        write_checkpoint(&path, "gpt_neox", shape, 0).expect("random checkpoint");
        let b = batch();
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let m =
                    model::load(&path, &LoraSpec::default(), &AdapterInit::Seeded(0), 0, &Device::Cpu).expect("loads");
                Trainer::new(&m, &spec()).expect("trainer").step(std::slice::from_ref(&b)).expect("step");
            })
        });
    }
    group.finish();
}

/// `plasticity scan` of the committed series (4 checkpoints), 4 updates each, through the
/// command's own steps (options, discovery, scan, reports) without printing the table.
fn small_scan(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = tempfile::tempdir().expect("temp dir");
    let report = out.path().join("r.json");
    let args = [
        "plasticity",
        "scan",
        "--quiet",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--seq-len",
        "32",
        "--eval-blocks",
        "4",
        "--batch-size",
        "4",
        "--json",
    ];
    let mut group = c.benchmark_group("scan");
    group.sample_size(10);
    for strategy in ["full", "race"] {
        group.bench_function(format!("committed_series_{strategy}"), |bench| {
            bench.iter(|| {
                let mut argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
                argv.extend([report.display().to_string(), "--strategy".into(), strategy.into(), "--task".into()]);
                argv.extend([root.join("task.jsonl").display().to_string(), root.join("series").display().to_string()]);
                let Command::Scan(args) = Cli::parse_from(argv).command else { unreachable!("a scan command line") };
                let opts = ScanOptions::from_args(args).expect("options");
                let found = discover::scan(&opts.dir).expect("series");
                let reports = Reports::create(&opts.exports).expect("report file");
                Scan::new(&opts, &found.checkpoints)
                    .and_then(|mut s| s.run(&found.checkpoints, &reports))
                    .expect("scan");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, time_to_first_step, small_scan);
criterion_main!(benches);
