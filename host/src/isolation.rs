//! Where a plugin instance runs: on a worker thread of the host, or in a worker
//! process of its own.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a plugin instance runs.
///
/// - [`Thread`](Isolation::Thread): a worker thread of the host, confined with landlock
///   and seccomp. A call costs about a microsecond, but the plugin is native code in
///   the host's address space: it can read and write host memory, use the host's open
///   descriptors, and a crash or `abort()` ends the host. For plugins you trust not to
///   be malicious (your own, or reviewed ones).
/// - [`Process`](Isolation::Process): a worker process of its own, confined as a whole
///   (landlock, seccomp, resource limits, and user and network namespaces where the
///   kernel allows them), with batches crossing through shared memory. A crash, an
///   abort, `exit()`, running out of memory or a hang ends only the worker; the host
///   gets an error naming the cause. For untrusted plugins; the default for plugins
///   run from the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// A worker thread of the host.
    #[default]
    Thread,
    /// A worker process of its own.
    Process,
}

impl Isolation {
    /// `thread` or `process`.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Thread => "thread",
            Isolation::Process => "process",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Isolation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "thread" => Ok(Isolation::Thread),
            "process" => Ok(Isolation::Process),
            other => Err(format!(
                "unknown isolation `{other}`; expected `thread` or `process`"
            )),
        }
    }
}
