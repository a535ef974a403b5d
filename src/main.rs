//! The `plasticity` command: parse the flags, run the command, and exit with its documented
//! code (docs/usage.md, "Exit codes"). Errors are printed on one line.

use clap::Parser;

use plasticity::app;
use plasticity::cli::{Cli, Command};

fn main() {
    plasticity::memory::keep_freed_memory();
    let result = match Cli::parse().command {
        Command::Scan(args) => app::scan(args),
        Command::Simulate(args) => app::simulate(args),
        Command::Demo(args) => app::demo(args),
        Command::Report(args) => app::report(args),
        Command::Select(args) => app::select(args),
        Command::Merge(args) => app::merge(args),
        Command::Probe(args) => app::probe(args),
    };
    let code = result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        e.exit_code()
    });
    std::process::exit(code);
}
