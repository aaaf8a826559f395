//! What 100 live upgrades leave behind in the host, on worker threads and in worker
//! processes. Not a criterion bench: it measures memory, once, and prints a table.
//!
//! Each run starts `sequencer`, sends it a batch of 1,000 records, then upgrades it
//! 100 times ([`Host::upgrade`]) with a batch after each upgrade, and reads after
//! every 10 upgrades:
//!
//! - the host's resident memory (`VmRSS` of `/proc/self/status`);
//! - the sealed copies of libraries it holds open (memfds named `plugbay:LIBRARY`
//!   in `/proc/self/fd`) and their bytes: a copy lives in memory, mapped or not;
//! - the worker processes of the upgraded plugin still alive (process isolation).
//!
//! Two kinds of upgrade: *rebuilds*, where every upgrade loads a library with other
//! bytes (the `sequencer` build with a different trailer appended, as each
//! `cargo build` of an edit gives a new library: what `plugbay dev` does), and *two
//! versions*, back and forth between `sequencer@1.0.0` and `sequencer@2.0.0`. Each
//! (isolation, kind) runs in a process of its own, so that one does not count what
//! another left.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use plugbay_host::{Host, Isolation, PluginSpec};

use common::{example, fixture, print_table, records, status_kb};

const UPGRADES: usize = 100;
const EVERY: usize = 10;
const MODE_VAR: &str = "PLUGBAY_UPGRADE_BENCH_RUN";

/// The sealed library copies this process holds open, and their bytes.
fn sealed_copies() -> (usize, u64) {
    let mut count = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        // A worker process's shared memory for batches is `plugbay:batches`.
        if target.starts_with("/memfd:plugbay:") && !target.starts_with("/memfd:plugbay:batches") {
            count += 1;
            bytes += std::fs::metadata(entry.path()).map_or(0, |m| m.len());
        }
    }
    (count, bytes)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}/exe")).exists()
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// `count` copies of `library`, each with other bytes appended (a new build each).
fn rebuilds(library: &Path, count: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let bytes = std::fs::read(library).expect("the library");
    let copies = (0..count)
        .map(|build| {
            let path = dir.path().join(format!("build-{build}"));
            std::fs::create_dir_all(&path).unwrap();
            let path = path.join(library.file_name().unwrap());
            let mut copy = bytes.clone();
            copy.extend_from_slice(format!("\nbuild {build}\n").as_bytes());
            std::fs::write(&path, copy).unwrap();
            path
        })
        .collect();
    (dir, copies)
}

/// One run, in this process: prints a line per reading, `upgrades rss_kb copies
/// copy_bytes workers_alive`.
fn measure(isolation: Isolation, kind: &str) {
    let host: Host = match isolation {
        Isolation::Thread => common::host(),
        Isolation::Process => common::process_host(),
    };
    let batch = records(1000);
    let first = example("sequencer");
    let (_dir, builds) = rebuilds(&first.library, UPGRADES);
    let spec_for = |upgrade: usize| -> PluginSpec {
        match kind {
            "rebuilds" => example("sequencer").with_library(&builds[upgrade]),
            _ if upgrade.is_multiple_of(2) => fixture("sequencer-next"),
            _ => example("sequencer"),
        }
    };
    let mut plugin = host.start(first).expect("sequencer starts");
    plugin.process(&batch).expect("a batch");
    let mut pids = Vec::new();
    let read = |upgrades: usize, pids: &[u32]| {
        let (copies, bytes) = sealed_copies();
        let workers = pids.iter().filter(|pid| alive(**pid)).count();
        println!(
            "{upgrades} {} {copies} {bytes} {workers}",
            status_kb("VmRSS")
        );
    };
    pids.extend(plugin.status().pid);
    read(0, &pids);
    for upgrade in 0..UPGRADES {
        host.upgrade(&mut plugin, spec_for(upgrade))
            .expect("the upgrade succeeds");
        pids.extend(plugin.status().pid);
        plugin.process(&batch).expect("a batch");
        if (upgrade + 1).is_multiple_of(EVERY) {
            read(upgrade + 1, &pids);
        }
    }
    plugin.shutdown().expect("shutdown");
}

fn main() {
    if let Ok(run) = std::env::var(MODE_VAR) {
        let (isolation, kind) = run.split_once('/').expect("ISOLATION/KIND");
        let isolation = isolation.parse().expect("thread or process");
        measure(isolation, kind);
        return;
    }
    // Build what the runs need once, here, rather than in each child.
    plugbay_tests::plugins_dir();
    plugbay_tests::plugbay_bin();
    let exe = std::env::current_exe().expect("this bench's path");
    let mut tables = Vec::new();
    for kind in ["rebuilds", "two versions"] {
        let mut columns: Vec<(String, Vec<Vec<u64>>)> = Vec::new();
        for isolation in ["thread", "process"] {
            let output = Command::new(&exe)
                .env(MODE_VAR, format!("{isolation}/{kind}"))
                .output()
                .expect("the bench runs itself");
            assert!(
                output.status.success(),
                "the {isolation}/{kind} run failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let rows = String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(|line| line.split(' ').map(|n| n.parse().unwrap()).collect())
                .collect();
            columns.push((isolation.to_owned(), rows));
        }
        tables.push((kind, columns));
    }
    for (kind, columns) in tables {
        let (thread, process) = (&columns[0].1, &columns[1].1);
        let rows: Vec<Vec<String>> = thread
            .iter()
            .zip(process)
            .map(|(t, p)| {
                vec![
                    t[0].to_string(),
                    mib(t[1]),
                    format!("{} ({})", t[2], mib(t[3] / 1024)),
                    mib(p[1]),
                    format!("{} ({})", p[2], mib(p[3] / 1024)),
                    p[4].to_string(),
                ]
            })
            .collect();
        print_table(
            &format!("Live upgrades of `sequencer`: {kind}; host memory after each 10"),
            &[
                "upgrades",
                "thread: VmRSS",
                "thread: sealed copies",
                "process: VmRSS",
                "process: sealed copies",
                "process: workers alive",
            ],
            &rows,
        );
    }
}
