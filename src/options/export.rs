//! The report files a command asks for (`--json`, `--markdown`, `--csv`, `--junit`, `--plot`),
//! shared by scan, report and merge: each format with where it goes, checked (a plot needs an
//! .svg or .png file, and at most one report may go to stdout). This file must not create or
//! write the files; `crate::report` does.

use crate::cli::ExportArgs;
use crate::error::{Error, Result};
use crate::report::{Format, Output};

/// The report files asked for; only one may go to stdout.
pub fn exports(args: &ExportArgs) -> Result<Vec<(Format, Output)>> {
    let all = [
        (Format::Json, &args.json),
        (Format::Markdown, &args.markdown),
        (Format::Csv, &args.csv),
        (Format::Junit, &args.junit),
        (Format::Plot, &args.plot),
    ];
    let list: Vec<(Format, Output)> =
        all.iter().filter_map(|(f, v)| v.as_deref().map(|v| (*f, Output::parse(v)))).collect();
    if let Some((_, out)) = list.iter().find(|(f, _)| *f == Format::Plot) {
        let ext = match out {
            Output::File(p) => p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase),
            Output::Stdout => return Err(Error::flag("--plot", "needs a file name ending in .svg or .png, not \"-\"")),
        };
        if !matches!(ext.as_deref(), Some("svg" | "png")) {
            return Err(Error::flag("--plot", "the file name must end in .svg or .png"));
        }
    }
    if list.iter().filter(|(_, o)| *o == Output::Stdout).count() > 1 {
        return Err(Error::flag("--json/--markdown/--csv/--junit", "only one report can go to stdout (\"-\")"));
    }
    Ok(list)
}
