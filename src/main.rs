//! The `plasticity` command: parse flags, resolve options, discover checkpoints, run the
//! scan, write the reports, and map the outcome to a documented exit code.

use clap::Parser;

use plasticity::cli::{Cli, Command};
use plasticity::error::{exit, Result};
use plasticity::options::ScanOptions;
use plasticity::report::{table, Reports};
use plasticity::{discover, runner};

fn main() {
    let code = match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    let Command::Scan(args) = cli.command;
    let opts = ScanOptions::from_args(args)?;
    configure_threads(opts.threads);
    let reports = Reports::create(opts.json.as_ref())?;
    let found = discover::scan(&opts.dir)?;
    found.warnings.iter().for_each(|w| eprintln!("warning: {w}"));
    let mut scan = runner::Scan::new(&opts)?;
    let report = scan.run(&found.checkpoints, &reports)?;
    reports.finish(&report)?;
    print_table(&table::render(&report), reports.uses_stdout());
    let failed = report.checkpoints.iter().filter(|c| c.status != "ok").count();
    Ok(match failed {
        0 => exit::OK,
        n if n == report.checkpoints.len() => exit::ALL_FAILED,
        _ => exit::SOME_FAILED,
    })
}

/// candle's CPU kernels size their thread pools from RAYON_NUM_THREADS.
fn configure_threads(threads: usize) {
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
}

/// The table goes to stdout, or to stderr when a report already uses stdout.
fn print_table(text: &str, stdout_taken: bool) {
    if stdout_taken { eprint!("{text}") } else { print!("{text}") }
}
