//! `data-processor`'s work as a subprocess plugin, the way process-based plugin
//! systems run plugins: a long-lived child that reads one batch per line on its
//! standard input (a JSON array, compact, so it holds no newline) and writes the
//! processed batch as one line on its standard output. The same transform code and
//! serde_json reading and writing as Plugbay's SDK.
//!
//! A line that is not a batch of records gets `{"error": "..."}` back, and the
//! plugin goes on with the next line.

use std::io::{BufRead, BufWriter, Write};
use std::time::SystemTime;

use serde_json::{Map, Value};

use plugbay_peer_bench::transform::Config;

fn main() {
    plugbay_peer_bench::tune_allocator_if_asked();
    let config = Config::default();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut output = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) => {
                eprintln!("subprocess-plugin: cannot read standard input: {err}");
                std::process::exit(1);
            }
        }
        let batch = line.strip_suffix(b"\n").unwrap_or(&line);
        let written = match serde_json::from_slice::<Vec<Map<String, Value>>>(batch) {
            Ok(mut records) => {
                config.apply(&mut records, SystemTime::now());
                if records.is_empty() {
                    output.write_all(b"[]")
                } else {
                    serde_json::to_writer(&mut output, &records).map_err(std::io::Error::from)
                }
            }
            Err(err) => serde_json::to_writer(
                &mut output,
                &serde_json::json!({ "error": format!("the line is not a batch of records: {err}") }),
            )
            .map_err(std::io::Error::from),
        };
        if let Err(err) = written
            .and_then(|()| output.write_all(b"\n"))
            .and_then(|()| output.flush())
        {
            eprintln!("subprocess-plugin: cannot write standard output: {err}");
            std::process::exit(1);
        }
    }
}
