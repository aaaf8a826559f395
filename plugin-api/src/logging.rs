//! The bridge from the `log` and `tracing` crates to the host's log.
//!
//! A plugin and every crate it uses log with `log::info!` or `tracing::info!`, and
//! those macros write to a logger (or a `tracing` subscriber) that the program sets
//! once. A plugin is a library: its copies of `log` and `tracing` are its own, and no
//! program sets anything in them, so without this bridge their lines go nowhere.
//!
//! When an instance starts, the SDK sets this library's `log` logger to the bridge
//! (unless the plugin set its own first) and the most verbose level to what the host
//! records. `tracing` needs nothing more: plugbay-api turns on `tracing`'s `log`
//! feature, with which `tracing`'s macros write `log` records as long as the plugin
//! sets no subscriber of its own. A line reaches the host through host services,
//! tagged with the plugin's id and with its target (the module that wrote it).
//!
//! # Which instance a line belongs to
//!
//! A library's statics are shared by every instance of it in a process, so the
//! bridge is too. A line written on a thread that is running one of an instance's
//! hooks goes to that instance; a line from any other thread (one the plugin started,
//! a thread pool's) goes to the instance that started last among those still running.
//! All of them have the same id: they are one library, in one confinement. Once the
//! last instance has stopped, lines are dropped, as the host drops those of a stopped
//! plugin.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, PoisonError, RwLock};

use abi_stable::std_types::RStr;

use crate::abi::{HostServicesBox, LogLevel};

/// The running instances of this library that lines may go to, oldest first.
static SINKS: RwLock<Vec<Sink>> = RwLock::new(Vec::new());

/// Numbers the instances of this library.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The instance whose hook runs on this thread (0: none).
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

struct Sink {
    instance: u64,
    services: HostServicesBox,
}

/// The bridge: this library's `log` logger.
struct Bridge;

static BRIDGE: Bridge = Bridge;

/// A new instance number.
pub(crate) fn next_instance() -> u64 {
    NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed)
}

/// Lines from this library go to `services` (of instance `instance`) until
/// [`detach`], filtered at `level` (`None`: the host records nothing).
pub(crate) fn attach(instance: u64, services: HostServicesBox, level: Option<LogLevel>) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // A plugin that set a logger of its own keeps it.
        let _ = log::set_logger(&BRIDGE);
    });
    log::set_max_level(level.map_or(log::LevelFilter::Off, filter));
    SINKS
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Sink { instance, services });
}

/// Lines no longer go to instance `instance`.
pub(crate) fn detach(instance: u64) {
    SINKS
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|sink| sink.instance != instance);
}

/// Marks the current thread as running a hook of `instance` until the guard drops.
pub(crate) fn running(instance: u64) -> Running {
    Running(CURRENT.with(|current| current.replace(instance)))
}

/// Restores the thread's previous instance when a hook returns.
pub(crate) struct Running(u64);

impl Drop for Running {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.0));
    }
}

fn filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Trace => log::LevelFilter::Trace,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Error => log::LevelFilter::Error,
    }
}

fn level(level: log::Level) -> LogLevel {
    match level {
        log::Level::Trace => LogLevel::Trace,
        log::Level::Debug => LogLevel::Debug,
        log::Level::Info => LogLevel::Info,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Error => LogLevel::Error,
    }
}

/// Whether `target` is one of the lines `tracing`'s `log` feature writes when a span
/// is created, entered or left (`-> name`): noise in a host's log, where the events
/// themselves arrive.
fn is_span_lifecycle(target: &str) -> bool {
    target == "tracing::span" || target.starts_with("tracing::span::")
}

impl log::Log for Bridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) || is_span_lifecycle(record.target()) {
            return;
        }
        let sinks = SINKS.read().unwrap_or_else(PoisonError::into_inner);
        let current = CURRENT.with(Cell::get);
        let sink = sinks
            .iter()
            .find(|sink| sink.instance == current)
            .or_else(|| sinks.last());
        if let Some(sink) = sink {
            let message = record.args().to_string();
            sink.services.log(
                level(record.level()),
                RStr::from_str(record.target()),
                RStr::from_str(&message),
            );
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_both_ways_and_span_lines_are_recognised() {
        for (ours, theirs) in [
            (LogLevel::Trace, log::Level::Trace),
            (LogLevel::Debug, log::Level::Debug),
            (LogLevel::Info, log::Level::Info),
            (LogLevel::Warn, log::Level::Warn),
            (LogLevel::Error, log::Level::Error),
        ] {
            assert_eq!(level(theirs), ours);
            assert_eq!(filter(ours), theirs.to_level_filter());
        }
        assert!(is_span_lifecycle("tracing::span"));
        assert!(is_span_lifecycle("tracing::span::active"));
        assert!(!is_span_lifecycle("tracing_plugin::spanner"));
    }
}
