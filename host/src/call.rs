//! One call into a plugin instance, on the thread that holds it: load and `init`,
//! `process` with the host's check of its output, and the deadlines calls wait by.
//! Worker threads, worker processes, local plugins and pipeline streams all call
//! through here.

use std::time::{Duration, Instant};

use abi_stable::std_types::{RResult, RSlice, RVec};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use plugbay_api::abi::{ErrorKind, PluginBox, PluginContext, PluginError};
use plugbay_api::manifest::Manifest;

use crate::batch::{count_array, Batch, Outputs};
use crate::error::StartError;
use crate::hints::Hint;
use crate::image::Image;
use crate::loader;

/// When a call of `timeout` that starts at `start` is due; `None` when that is too
/// far to represent (as for [`Duration::MAX`]): no deadline.
pub(crate) fn deadline_after(start: Instant, timeout: Duration) -> Option<Instant> {
    start.checked_add(timeout)
}

/// Receives from `channel`, waiting until `deadline` (for ever without one).
pub(crate) fn recv_by<T>(
    channel: &Receiver<T>,
    deadline: Option<Instant>,
) -> Result<T, RecvTimeoutError> {
    match deadline {
        Some(deadline) => channel.recv_deadline(deadline),
        None => channel.recv().map_err(RecvTimeoutError::from),
    }
}

/// Why `process` gave no batch.
pub(crate) enum Outcome {
    Plugin(PluginError),
    InvalidOutput(String),
    /// The worker process ended (and is gone).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Crashed(String),
    /// The worker process missed the deadline (and was killed).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Late,
}

/// Opens and checks `library`, builds an instance and calls its `init` with
/// `context`. Returns the instance and the plugbay-api version it was built against.
///
/// Opening a library runs its code: call this only on a thread that is already
/// confined.
pub(crate) fn load_and_init(
    id: &str,
    image: &Image,
    manifest: &Manifest,
    context: PluginContext,
) -> Result<(PluginBox, semver::Version), StartError> {
    let loaded = loader::open(image)?;
    loader::check_manifest(&image.path, &loaded.manifest, manifest)?;
    let mut instance = match (loaded.module.new())() {
        RResult::ROk(instance) => instance,
        RResult::RErr(error) => {
            return Err(StartError::Constructor {
                id: id.to_owned(),
                error,
            })
        }
    };
    match instance.init(context) {
        RResult::ROk(()) => Ok((instance, loaded.api_version)),
        RResult::RErr(error) if error.kind == ErrorKind::PANICKED => {
            // After a panic the instance's state is unknown: never drop it.
            std::mem::forget(instance);
            Err(StartError::InitPanicked {
                id: id.to_owned(),
                message: error.message.into(),
                hint: Hint::default(),
            })
        }
        RResult::RErr(error) => Err(StartError::Init {
            id: id.to_owned(),
            error,
            hint: Hint::default(),
        }),
    }
}

/// Calls the instance's `process` hook on the current thread, with the output written
/// into a buffer of `outputs` (`process_into`), and validates and counts the output.
pub(crate) fn process_here(
    instance: &mut PluginBox,
    batch: &Batch,
    outputs: &mut Outputs,
) -> Result<Batch, Outcome> {
    let mut bytes = outputs.take();
    let result = instance.process_into(RSlice::from_slice(batch.as_bytes()), &mut bytes);
    match result {
        RResult::ROk(()) => match count_array(bytes.as_slice()) {
            Ok(records) => Ok(outputs.batch(bytes, records)),
            Err(reason) => {
                outputs.keep(bytes);
                Err(Outcome::InvalidOutput(reason))
            }
        },
        RResult::RErr(error) => {
            outputs.keep(bytes);
            Err(Outcome::Plugin(error))
        }
    }
}

/// Every batch a plugin returns must be exactly one JSON array (see
/// `PluginInstance::process` in plugbay-api); the host counts its records itself.
/// (Output written into the host's buffer is checked where it is written; this is
/// for the bytes a worker process sends.)
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn check_output(bytes: RVec<u8>) -> Result<Batch, Outcome> {
    match count_array(bytes.as_slice()) {
        Ok(records) => Ok(Batch::from_plugin(bytes, records)),
        Err(reason) => Err(Outcome::InvalidOutput(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(bytes: &[u8]) -> Result<Batch, Outcome> {
        check_output(RVec::from(bytes.to_vec()))
    }

    fn invalid(bytes: &[u8]) -> String {
        match output(bytes) {
            Err(Outcome::InvalidOutput(reason)) => reason,
            Ok(batch) => panic!("{bytes:?} passed as {batch:?}"),
            Err(Outcome::Plugin(error)) => panic!("{error}"),
            Err(Outcome::Crashed(cause)) => panic!("{cause}"),
            Err(Outcome::Late) => panic!("late"),
        }
    }

    #[test]
    fn output_is_validated_and_counted_by_the_host() {
        let batch = output(br#"[{"a":1},{"a":2}]"#).ok().unwrap();
        assert_eq!(batch.as_bytes(), br#"[{"a":1},{"a":2}]"#);
        assert_eq!(batch.len(), Some(2));
        assert_eq!(output(b" [] ").ok().unwrap().len(), Some(0));
    }

    #[test]
    fn output_that_is_not_one_array_is_refused() {
        assert!(invalid(b"[1,").contains("EOF"));
        assert!(invalid(b"{}").contains("expected a JSON array"));
        assert!(invalid(b"[1] [2]").contains("trailing characters"));
        assert!(invalid(b"").contains("no bytes"));
        assert!(invalid(b"[\"\xff\"]").contains("invalid unicode"));
        // What the mark of ABI 0.1 looked like: trailing whitespace is allowed by
        // JSON, so the bytes pass, but they are counted, not trusted.
        let forged = [&b"[1,2]\n"[..], &[b'\t'; 112]].concat();
        assert_eq!(output(&forged).ok().unwrap().len(), Some(2));
    }
}
