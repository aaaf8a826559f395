//! What a running `plugbay serve` holds in memory, and why: the heap the program
//! uses (blocks allocated and not freed) against what the C allocator keeps of
//! freed blocks for reuse, and what the process has resident.
//!
//! A leak shows as heap in use that grows with the requests served; memory the
//! allocator keeps shows as resident memory that grows while the heap in use does
//! not, and that `malloc_trim` gives back. [`Load`] drives a real server on
//! loopback with a mix of requests over keep-alive connections, and [`Heap`] reads
//! glibc's own accounting (`mallinfo2`, summed over all its arenas).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use plugbay_host::registry::{Registry, Scope};
use plugbay_host::server::{RunningServer, ServeOptions, Server};
use serde_json::{json, Value};

use crate::{example_manifest, library, plugbay_bin};

/// The process's memory, as the kernel and the C allocator count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heap {
    /// Resident memory (`VmRSS`), in KiB.
    pub resident_kib: u64,
    /// Of which anonymous memory (`RssAnon`: heap, stacks), in KiB.
    pub anonymous_kib: u64,
    /// Of which mapped files (`RssFile`: code and data of the program and its
    /// libraries, faulted in as it runs), in KiB.
    pub file_kib: u64,
    /// Bytes in blocks allocated and not freed (`uordblks + hblkhd`).
    pub in_use: u64,
    /// Bytes freed and kept by the allocator in its arenas for reuse (`fordblks`).
    pub kept_free: u64,
    /// Bytes the allocator has from the system for its arenas (`arena`).
    pub arenas: u64,
    /// Threads of the process.
    pub threads: u64,
}

impl Heap {
    /// Reads them now (glibc only; elsewhere the allocator's figures are 0).
    pub fn now() -> Heap {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        let (in_use, kept_free, arenas) = {
            // SAFETY: `mallinfo2` only reads the allocator's statistics, under its
            // own locks, and returns them by value.
            let info = unsafe { libc::mallinfo2() };
            (
                (info.uordblks + info.hblkhd) as u64,
                info.fordblks as u64,
                info.arena as u64,
            )
        };
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        let (in_use, kept_free, arenas) = (0, 0, 0);
        Heap {
            resident_kib: field("VmRSS"),
            anonymous_kib: field("RssAnon"),
            file_kib: field("RssFile"),
            in_use,
            kept_free,
            arenas,
            threads: field("Threads"),
        }
    }

    /// Asks the allocator to give the free memory it keeps back to the system
    /// (`malloc_trim(0)`), then reads the figures again.
    pub fn after_trim() -> Heap {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `malloc_trim` releases free memory at the top of each arena and
        // whole free pages inside them, under the allocator's locks; blocks in use
        // are not touched.
        unsafe {
            libc::malloc_trim(0);
        }
        Heap::now()
    }
}

/// A server on loopback with two enabled plugins (`data-processor` in a worker
/// process, `redactor` on a worker thread of the server), and the requests to
/// send it.
pub struct Load {
    server: Option<RunningServer>,
    _dir: tempfile::TempDir,
    requests: Vec<Vec<u8>>,
}

/// Registers, approves (with `isolation`) and enables an example plugin.
fn ready(home: &Path, name: &str, isolation: plugbay_host::Isolation) -> String {
    let mut registry = Registry::open(home).expect("the registry opens");
    let manifest = example_manifest(name);
    let host = plugbay_host::Host::new()
        .with_isolation(plugbay_host::Isolation::Process)
        .with_worker_program(plugbay_bin());
    let registration =
        plugbay_host::registry::Registration::from_path(&manifest, Some(&library(name)))
            .expect("the example manifest is valid");
    let entry = registry
        .register(&host, registration, "memory")
        .expect("the example registers");
    registry
        .approve_with_isolation(&entry.id, "memory", None, isolation)
        .expect("the example is approved");
    registry
        .enable(&entry.id, "memory")
        .expect("the example is enabled");
    entry.id
}

impl Load {
    /// Starts the server.
    pub fn start() -> Load {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let home = dir.path().join("home");
        let token = Registry::open(&home)
            .expect("the registry opens")
            .create_key(
                "memory",
                &[Scope::Read, Scope::Write, Scope::Review, Scope::Execute],
                "memory",
            )
            .expect("a key")
            .1;
        let processor = ready(&home, "data-processor", plugbay_host::Isolation::Process);
        let redactor = ready(&home, "redactor", plugbay_host::Isolation::Thread);
        let mut options = ServeOptions::new(&home);
        options.addr = "127.0.0.1:0".parse().expect("an address");
        options.worker_program = Some(plugbay_bin().to_owned());
        let server = Server::bind(options)
            .expect("the server binds")
            .spawn()
            .expect("the server starts");
        let records: Vec<Value> = (0..10)
            .map(|i| json!({"id": i, "email": format!("user{i}@example.com"), "note": "call +1 555 0100"}))
            .collect();
        let batch = Value::from(records).to_string();
        let get = |path: &str, key: bool| {
            let auth = if key {
                format!("Authorization: Bearer {token}\r\n")
            } else {
                String::new()
            };
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").into_bytes()
        };
        let post = |path: &str, body: &str| {
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        let requests = vec![
            get("/health", false),
            get("/plugins", true),
            get(&format!("/plugins/{processor}"), true),
            post(&format!("/plugins/{processor}/process"), &batch),
            post(&format!("/plugins/{redactor}/process"), &batch),
            get("/plugins/nope@1.0.0", true),
            get("/plugins", false),
            post(
                &format!("/plugins/{redactor}/review"),
                "[\"not an object\"]",
            ),
        ];
        Load {
            server: Some(server),
            _dir: dir,
            requests,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().expect("the server runs").local_addr()
    }

    /// Sends `total` requests from `clients` keep-alive connections at once, the mix
    /// in turn; every answer is read in full. Returns the statuses seen, in order
    /// of the mix.
    pub fn run(&self, total: usize, clients: usize) -> Vec<u16> {
        let addr = self.addr();
        let per_client = total / clients;
        let statuses = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..clients)
                .map(|client| {
                    let requests = &self.requests;
                    scope.spawn(move || {
                        let mut stream = TcpStream::connect(addr).expect("connect");
                        stream
                            .set_read_timeout(Some(Duration::from_secs(60)))
                            .expect("a read timeout");
                        let mut buffer = vec![0u8; 64 * 1024];
                        let mut statuses = vec![0u16; requests.len()];
                        for i in 0..per_client {
                            let which = (client + i) % requests.len();
                            stream.write_all(&requests[which]).expect("send");
                            statuses[which] = read_answer(&mut stream, &mut buffer);
                        }
                        statuses
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().expect("a client"))
                .collect::<Vec<_>>()
        });
        statuses[0].clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.stop();
        }
    }
}

/// Waits until the server's idle threads have ended (the runtime ends a blocking
/// thread after 10 s without work, and what the thread held with it).
pub fn settle() {
    std::thread::sleep(Duration::from_secs(12));
}

/// Reads one answer with a `Content-Length` body into `buffer`; returns its status.
fn read_answer(stream: &mut TcpStream, buffer: &mut [u8]) -> u16 {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buffer[filled..]).expect("an answer");
        assert!(n > 0, "the server closed the connection");
        filled += n;
        let Some(end) = buffer[..filled]
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
        else {
            continue;
        };
        let head = std::str::from_utf8(&buffer[..end]).expect("a text head");
        let status = head[9..12].parse().expect("a status");
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .expect("a Content-Length");
        let mut left = (end + 4 + length).saturating_sub(filled);
        while left > 0 {
            let n = stream
                .read(&mut buffer[..left.min(64 * 1024)])
                .expect("the body");
            assert!(n > 0, "the server closed the connection");
            left -= n;
        }
        return status;
    }
}
