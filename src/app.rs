//! The commands `main.rs` dispatches to (`scan`, `report`, `select`, `merge`, `probe`,
//! `simulate`, `demo`), each a sequence of named phases that returns the exit code; errors
//! travel up to main, which prints them on one line. This module wires the pipeline together;
//! it must not train, score or format anything itself.

use std::path::PathBuf;

use clap::Parser;

use crate::cli::{DemoArgs, MergeArgs, ProbeArgs, ReportArgs, ScanArgs, ScanOnly, SelectArgs, SimulateArgs};
use crate::discover::{self, CheckpointRef};
use crate::error::{exit, Error, Result};
use crate::hub::{self, Fetcher, HubEnv};
use crate::options::{self, ScanOptions};
use crate::report::{headline, markdown, table, Report, Reports, ScanStatus, Status};
use crate::runner::Scan;
use crate::single_index::simulate;

/// `plasticity scan`: discover, fine-tune each checkpoint, rank, report.
pub fn scan(args: ScanArgs) -> Result<i32> {
    let opts = ScanOptions::from_args(args)?;
    let report = run_scan(&opts)?;
    Ok(exit_code(&report))
}

fn run_scan(opts: &ScanOptions) -> Result<Report> {
    configure_cpu(opts.threads)?;
    crate::interrupt::install()?;
    let previous = opts.resume.as_deref().map(Report::read).transpose()?; // before the report files are created
    let reports = Reports::create(&opts.exports)?;
    let (checkpoints, fetcher) = snapshots(opts)?;
    let report = match &opts.sweep {
        Some(sweep) => crate::runner::run_sweep(
            opts,
            sweep,
            &checkpoints,
            &reports,
            previous.zip(opts.resume.as_deref()),
            fetcher.as_ref(),
        )?,
        None => {
            let mut scan = Scan::new(opts, &checkpoints)?.with_fetcher(fetcher.as_ref());
            if let (Some(prev), Some(path)) = (previous, &opts.resume) {
                scan.resume_from(prev, path)?;
            }
            scan.run(&checkpoints, &reports)?
        }
    };
    reports.finish(&report)?;
    if let (Some(dir), true, ScanStatus::Complete) = (&opts.save_adapters, opts.save_best, report.status) {
        keep_best_adapter(dir, &report)?;
    }
    print_text(&table::render(&report), reports.uses_stdout());
    for warning in crate::report::warnings::warnings(&report) {
        eprintln!("warning: {warning}");
    }
    for gate in report.gates.iter().filter(|g| !g.passed) {
        eprintln!("gate failed: {}", gate.message);
    }
    if opts.step_summary {
        append_step_summary(&report);
    }
    Ok(report)
}

/// The snapshots to scan, in step order: found in the folder or listed on the Hub, then
/// selected and partitioned; for a Hub scan, the fetcher that downloads them.
fn snapshots(opts: &ScanOptions) -> Result<(Vec<CheckpointRef>, Option<Fetcher>)> {
    let mut listing = opts.hub.as_ref().map(|h| hub::list(&h.repo, HubEnv::from_process())).transpose()?;
    let mut found = match &mut listing {
        Some(l) => std::mem::take(&mut l.discovery),
        None => discover::scan(&opts.dir)?,
    };
    found.warnings.iter().for_each(|w| eprintln!("warning: {w}"));
    if let Some(selection) = &opts.selection {
        let count = found.checkpoints.len();
        found.checkpoints = selection.select(found.checkpoints)?;
        eprintln!("scanning {} of the series' {count} snapshot(s)", found.checkpoints.len());
    }
    if let Some(part) = opts.partition {
        found.checkpoints = part.select(found.checkpoints);
        eprintln!(
            "partition {part}: {} checkpoint(s) of the series; join the parts' reports with `plasticity merge`",
            found.checkpoints.len()
        );
    }
    let keep = opts.hub.as_ref().is_none_or(|h| h.keep);
    let fetcher = listing.map(|l| l.prepare(&found.checkpoints, keep, opts.progress));
    Ok((found.checkpoints, fetcher))
}

/// --save-best: once the scan is complete, only the winner's adapter stays in `dir` (an
/// interrupted scan keeps every adapter it saved: the winner is not known yet).
fn keep_best_adapter(dir: &std::path::Path, report: &Report) -> Result<()> {
    if report.sweep.is_some() {
        match crate::runner::keep_best_sweep_adapter(dir, report)? {
            Some(best) => eprintln!("adapter of the best (rank, rate) and checkpoint: {}", best.display()),
            None => eprintln!(
                "warning: --save-best: no variant's winner has a saved adapter in {}; every adapter is kept",
                dir.display()
            ),
        }
        return Ok(());
    }
    let Some(best) = report.ranking.first() else { return Ok(()) };
    if !dir.join(best).is_dir() {
        // e.g. the winner was reused from a resumed report whose scan saved no adapter
        eprintln!(
            "warning: --save-best: the winner {best} has no saved adapter in {}; every adapter is kept",
            dir.display()
        );
        return Ok(());
    }
    for c in report.checkpoints.iter().filter(|c| &c.name != best) {
        let path = dir.join(&c.name);
        if path.exists() {
            crate::lora::peft::ensure_adapter_folder(&path)?;
            std::fs::remove_dir_all(&path)
                .map_err(|e| Error::input(&path, format!("cannot remove a non-winning adapter: {e}")))?;
        }
    }
    eprintln!("adapter of the best checkpoint: {}", dir.join(best).display());
    Ok(())
}

/// `plasticity report`: render a saved report in other formats, without training.
pub fn report(args: ReportArgs) -> Result<i32> {
    let report = Report::read(&args.report)?;
    let exports = options::exports(&args.export)?;
    if exports.is_empty() {
        print_stdout(&table::render(&report));
    }
    let reports = Reports::create(&exports)?;
    reports.finish(&report)?;
    Ok(exit::OK)
}

/// `plasticity merge`: one report from the parts of a partitioned scan, scored together.
pub fn merge(args: MergeArgs) -> Result<i32> {
    let parts = args.reports.iter().map(|p| Ok((p.clone(), Report::read(p)?))).collect::<Result<Vec<_>>>()?;
    let (report, warnings) = crate::runner::merge(parts)?;
    warnings.iter().for_each(|w| eprintln!("warning: {w}"));
    let exports = options::exports(&args.export)?;
    let reports = Reports::create(&exports)?;
    reports.finish(&report)?;
    print_text(&table::render(&report), reports.uses_stdout());
    Ok(exit_code(&report))
}

/// The CPU's thread pools and kernel family, before any tensor operation; a
/// `PLASTICITY_KERNELS` this CPU cannot honour is refused here.
fn configure_cpu(threads: usize) -> Result<()> {
    crate::device::configure_cpu_threads(threads);
    crate::isa::from_env().map(drop).map_err(|why| Error::flag(crate::isa::ENV, why))
}

/// `plasticity probe`: the forecast table (and --against's correlations), optionally as JSON.
pub fn probe(args: ProbeArgs) -> Result<i32> {
    let opts = options::ProbeOptions::from_args(args)?;
    configure_cpu(opts.threads)?;
    let report = crate::probe::run(&opts)?;
    let json = serde_json::to_string_pretty(&report).map_err(|source| Error::Encode { what: "report", source })?;
    let stdout_taken = match &opts.json {
        Some(crate::report::Output::File(path)) => {
            crate::fs::write_atomic(path, format!("{json}\n").as_bytes())?;
            false
        }
        Some(crate::report::Output::Stdout) => {
            print_stdout(&format!("{json}\n"));
            true
        }
        None => false,
    };
    print_text(&crate::probe::table::render(&report), stdout_taken);
    Ok(if report.probes.iter().any(|p| p.status != Status::Ok) { exit::SOME_FAILED } else { exit::OK })
}

/// `plasticity select`: the path of the best checkpoint (or the best K), one per line.
pub fn select(args: SelectArgs) -> Result<i32> {
    let report = Report::read(&args.report)?;
    if report.ranking.is_empty() {
        return Err(Error::input(&args.report, "the report ranks no checkpoint"));
    }
    for name in report.ranking.iter().take(args.top.max(1)) {
        let c =
            report.checkpoints.iter().find(|c| &c.name == name).ok_or_else(|| {
                Error::input(&args.report, format!("ranked checkpoint {name} is not in checkpoints[]"))
            })?;
        print_stdout(&format!("{}\n", c.path));
    }
    Ok(exit::OK)
}

/// `plasticity simulate`: write a single-index checkpoint series.
pub fn simulate(args: SimulateArgs) -> Result<i32> {
    let spec = options::simulate_spec(&args.series, args.out, false)?;
    let dirs = simulate::write_series(&spec)?;
    print_stdout(&format!(
        "wrote {} snapshots to {} (scan it with: plasticity scan {})\n",
        dirs.len(),
        spec.out.display(),
        spec.out.display()
    ));
    Ok(exit::OK)
}

/// `plasticity demo`: simulate the paper's reference series, scan it, explain the ranking.
pub fn demo(args: DemoArgs) -> Result<i32> {
    let tmp = match &args.dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(|e| Error::system("cannot create a temporary folder", e))?),
    };
    let dir: PathBuf =
        args.dir.clone().unwrap_or_else(|| tmp.as_ref().map(|t| t.path().join("series")).unwrap_or_default());
    let spec = options::simulate_spec(&args.series, dir.clone(), true)?;
    simulate::write_series(&spec)?;
    eprintln!(
        "simulated {} snapshots of the single-index model (link {}, d = {}) in {}",
        count_dirs(&dir),
        spec.link,
        spec.dim,
        dir.display()
    );
    let opts = ScanOptions::from_args(demo_scan_args(&dir, args.json.as_deref())?)?;
    let report = run_scan(&opts)?;
    let stdout_taken = opts.exports.iter().any(|(_, o)| *o == crate::report::Output::Stdout);
    print_text(&format!("\n{}\n", headline::headline(&report)), stdout_taken);
    Ok(exit_code(&report))
}

/// scan's own defaults on the simulated folder, with three seeds: the headline's verdict is
/// then backed by 95% intervals.
fn demo_scan_args(dir: &std::path::Path, json: Option<&str>) -> Result<ScanArgs> {
    let mut argv = vec!["scan".to_string(), dir.display().to_string(), "--seeds".into(), "3".into()];
    if let Some(j) = json {
        argv.extend(["--json".to_string(), j.to_string()]);
    }
    ScanOnly::try_parse_from(argv).map(|s| s.args).map_err(|e| Error::internal(e.to_string()))
}

fn count_dirs(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.flatten().filter(|e| e.path().is_dir()).count()).unwrap_or(0)
}

/// A failed checkpoint outranks a failed gate: the gate was judged on incomplete results.
fn exit_code(report: &Report) -> i32 {
    if report.status == ScanStatus::Interrupted {
        exit::INTERRUPTED
    } else if report.checkpoints.iter().any(|c| matches!(c.status, Status::Failed | Status::Diverged)) {
        exit::SOME_FAILED
    } else if report.gates.iter().any(|g| !g.passed) {
        exit::GATE
    } else {
        exit::OK
    }
}

/// GitHub Actions shows what a step appends to $GITHUB_STEP_SUMMARY (at most 1 MiB per step).
fn append_step_summary(report: &Report) {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) else { return };
    let mut text = markdown::render(report);
    if text.len() > 512 * 1024 {
        let cut = (0..=512 * 1024).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text = format!("{}\n\n(summary cut at 512 KiB; see the full report)\n", &text[..cut]);
    }
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    if let Err(e) = appended {
        eprintln!("warning: cannot append to $GITHUB_STEP_SUMMARY ({}): {e}", PathBuf::from(path).display());
    }
}

/// candle's CPU kernels size their thread pools from RAYON_NUM_THREADS.
/// Human text goes to stdout, or to stderr when a report already uses stdout.
fn print_text(text: &str, stdout_taken: bool) {
    if stdout_taken {
        eprint!("{text}")
    } else {
        print_stdout(text)
    }
}

/// Writes to stdout; a reader that closed the pipe early (`| head`) is not an error, and
/// `print!` would panic on it.
fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}
