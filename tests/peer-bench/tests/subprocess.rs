//! The subprocess plugin does the in-host work, batch after batch, and answers a
//! line that is not a batch with an error without stopping.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use plugbay_peer_bench::transform::Config;
use plugbay_peer_bench::{in_host, records, same_output, Input, Peer, Subprocess};

#[test]
fn the_subprocess_plugin_does_the_in_host_work() {
    let mut plugin = Subprocess::start(env!("CARGO_BIN_EXE_subprocess-plugin").as_ref());
    for n in [0, 1, 100, 1_000] {
        let input = Input::new(n);
        let output = plugin.process(&input);
        same_output(
            "subprocess",
            output.as_bytes(),
            &in_host(&Config::default(), &records(n)),
        )
        .unwrap();
    }
}

#[test]
fn a_line_that_is_not_a_batch_gets_an_error_and_the_next_one_an_answer() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_subprocess-plugin"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdin
        .write_all(b"{\"not\": \"a batch\"}\n[{\"id\":1}]\n")
        .unwrap();
    drop(stdin);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("{\"error\":\"the line is not a batch of records"),
        "{line}"
    );
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("[{\"id\":1,\"processed\":true,\"timestamp\":\""),
        "{line}"
    );
    assert!(child.wait().unwrap().success());
}
