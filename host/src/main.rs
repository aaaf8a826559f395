//! `plugbay`: operate a local registry of Plugbay plugins and run them.
//!
//! Exit codes: 0 ok (a closed stdout, as in `plugbay list | head -1`, is ok too),
//! 1 error, 2 usage; 128 + the signal's number for a `run --output FILE` stopped by a
//! signal. Errors go to stderr as `error: ` and the chain of causes, or with `--json`
//! as one line of JSON, `{"error": {"code": "failed" | "usage", "message": …}}`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Started as a plugin's worker process: serve it, and exit.
    #[cfg(target_os = "linux")]
    plugbay_host::serve_worker_if_asked();
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(err) => {
            // `--help` and `--version` print to stdout and succeed; usage errors exit 2.
            if !err.use_stderr() {
                let _ = err.print();
                return ExitCode::SUCCESS;
            }
            // The command line did not parse, so look for `--json` among the words.
            if std::env::args_os().skip(1).any(|arg| arg == "--json") {
                let text = err.render().to_string();
                let message = text.trim().strip_prefix("error: ").unwrap_or(text.trim());
                cli::print_json_error("usage", message);
            } else {
                let _ = err.print();
            }
            return ExitCode::from(2);
        }
    };
    cli::init_logging(args.global.verbose);
    let json = args.global.json;
    match args.exec() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if cli::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) if json => {
            cli::print_json_error("failed", &cli::error_chain(&err));
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {}", cli::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
