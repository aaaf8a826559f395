//! The stable ABI between a Plugbay host and its plugins.
//!
//! Everything here crosses the library boundary, so every type is `#[repr(C)]` and
//! derives [`StableAbi`]: the host checks the layout of the whole module, field by
//! field, before it calls anything.
//!
//! # Compatibility
//!
//! The root module is a prefix type and is frozen as of ABI 0.2.0: new capabilities
//! come as optional modules, never as changed fields. [`ABI_VERSION`] changes only on
//! a real ABI break, not with every release of this crate; the plugbay-api version a
//! plugin was built against travels separately in [`PluginMod::api_version`] and is
//! checked by the host with semver rules. No cargo feature may change a type in this
//! module.
//!
//! # Batches
//!
//! A batch crosses the boundary as bytes and nothing else: the UTF-8 text of exactly
//! one JSON array of records, both ways ([`PluginInstance::process`]). There is no
//! side channel in the bytes and no special spelling: no bytes at all is not a batch,
//! and nothing the plugin says about its own output is trusted. The host validates
//! every batch a plugin returns before it passes it on.
//!
//! Plugin authors never use this module directly: `#[plugbay::plugin]` generates it.

// abi_stable's `sabi_trait` expands to impls inside a const block.
#![allow(non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, sabi_trait, StableAbi};

/// The version of the binary interface. It changes only when a type in this module
/// or the contract of its bytes changes incompatibly; abi_stable refuses a library
/// whose ABI version differs (for 0.x, a different minor version).
///
/// - `0.1.0`: the first ABI. An empty output vector stood for `[]`, and the SDK
///   appended a mark with the record count after its output.
/// - `0.2.0`: a batch is always one JSON array, both ways, with nothing appended, and
///   the host validates every batch a plugin returns. The root module is frozen from
///   here on.
/// - `0.3.0`: a log line carries its target (the module that wrote it, as `log` and
///   `tracing` name it), and [`PluginContext::log_level`] tells the plugin the most
///   verbose level the host records, so that the SDK's bridge for the `log` and
///   `tracing` crates drops what the host would not record before it formats it.
/// - `0.4.0`: [`PluginInstance::process_into`]: the plugin writes its output into a
///   buffer the host keeps from call to call. It is an entry added at the end of the
///   instance's vtable, but abi_stable's layout check refuses a vtable shorter than
///   the host's in a trait object a constructor returns, so plugins of 0.3.0 would not
///   load anyway: the version says so before any layout is compared, and tells their
///   authors to rebuild.
pub const ABI_VERSION: &str = "0.4.0";

/// The plugbay-api version this crate is, compiled into every plugin.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The root module every plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
pub struct PluginMod {
    /// The plugbay-api version the plugin was compiled against.
    pub api_version: RStr<'static>,
    /// The plugin's validated `plugin.json`, as JSON.
    pub manifest: RStr<'static>,
    /// Whether the plugin was built with `panic = "unwind"`, so its hooks can turn
    /// panics into errors. The host refuses plugins built with `panic = "abort"`.
    pub panic_unwind: bool,
    /// Builds a new plugin instance.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn() -> RResult<PluginBox, PluginError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "plugbay_plugin";
    const NAME: &'static str = "plugbay plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(ABI_VERSION);
}

/// A plugin instance, as the host sees it.
///
/// The generated implementation runs every hook inside `catch_unwind`.
#[sabi_trait]
pub trait PluginInstance: Send {
    /// `init(context)`: called once, before any batch.
    fn init(&mut self, context: PluginContext) -> RResult<(), PluginError>;

    /// `process(batch)`: a JSON array of records in, a JSON array of records out.
    ///
    /// Both ways, the bytes are the UTF-8 text of exactly one JSON array (RFC 8259,
    /// whitespace allowed around it), and nothing else: an empty batch is `[]`, never
    /// zero bytes, and nothing may follow the array. A plugin refuses input it
    /// cannot read (the SDK: as invalid input). The output is validated by the host
    /// before anything else sees it: it must be what `serde_json` parses as one
    /// array (well-formed, valid UTF-8 in and outside strings, no lone surrogate
    /// escapes, numbers in range, at most 128 levels deep), and the host counts its
    /// records itself. Anything else, zero bytes included, is refused as invalid
    /// output, naming the plugin.
    ///
    /// The output vector is allocated by the plugin and freed through its own vtable,
    /// on whichever side drops it.
    fn process(&mut self, batch: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;

    /// `cleanup()`: the last call an instance receives.
    #[sabi(last_prefix_field)]
    fn cleanup(&mut self) -> RResult<(), PluginError>;

    /// [`process`](PluginInstance::process), writing the output into `output`, a
    /// buffer the host keeps from call to call: the plugin clears it and writes the
    /// output array into it (growing it if it must), so that a stream of batches
    /// reuses one buffer instead of allocating and freeing one per batch. The
    /// output's contract is `process`'s. On an error `output` holds nothing the host
    /// reads.
    ///
    /// Added in ABI 0.4.0. Its default calls `process` and takes its output vector as
    /// the buffer, for instances that implement only `process` (the SDK implements
    /// both).
    fn process_into(
        &mut self,
        batch: RSlice<'_, u8>,
        output: &mut RVec<u8>,
    ) -> RResult<(), PluginError> {
        match self.process(batch) {
            RResult::ROk(bytes) => {
                *output = bytes;
                RResult::ROk(())
            }
            RResult::RErr(error) => RResult::RErr(error),
        }
    }
}

/// An owned plugin instance.
pub type PluginBox = PluginInstance_TO<'static, RBox<()>>;

/// What the host gives a plugin at `init`.
#[repr(C)]
#[derive(StableAbi)]
pub struct PluginContext {
    /// The plugin's id, `name@version`.
    pub plugin_id: RString,
    /// The plugin's config, a JSON object.
    pub config: RString,
    /// The plugin's own directory (where its manifest and files live): `${plugin_dir}`.
    pub plugin_dir: RString,
    /// The directory the host gives plugins for their data: `${data_dir}`.
    pub data_dir: RString,
    /// Logging and the data store, checked against the plugin's permissions by the host.
    pub services: HostServicesBox,
    /// The most verbose level the host records from this plugin (`RNone`: it records
    /// nothing); lines above it would be dropped by the host, so a plugin need not
    /// format them.
    pub log_level: ROption<LogLevel>,
}

/// A log level, as `tracing` has them, from the most verbose to the most severe.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Very verbose.
    Trace = 0,
    /// For developers.
    Debug = 1,
    /// Normal operation.
    Info = 2,
    /// Something to look at.
    Warn = 3,
    /// Something failed.
    Error = 4,
}

/// Services the host offers a plugin. Each call is checked against the plugin's
/// granted permissions on the host side.
#[sabi_trait]
pub trait HostServices: Send + Sync {
    /// Writes a line into the host's log, tagged with the plugin's id and with
    /// `target`, the module that wrote it (empty for the plugin's own `Context::log`).
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>);

    /// Reads a value from the data store (`read:data`).
    fn store_get(&self, key: RStr<'_>) -> RResult<ROption<RVec<u8>>, PluginError>;

    /// Writes a value into the data store (`write:data`).
    fn store_put(&self, key: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), PluginError>;

    /// Removes a value from the data store (`write:data`); says whether it was there.
    #[sabi(last_prefix_field)]
    fn store_delete(&self, key: RStr<'_>) -> RResult<bool, PluginError>;
}

/// A shared handle to the host's services.
pub type HostServicesBox = HostServices_TO<'static, RArc<()>>;

/// What kind of failure a [`PluginError`] is. A number rather than an enum, so that
/// new kinds do not break the ABI; unknown kinds read as [`ErrorKind::FAILED`].
///
/// Its `Debug` names the kind (`ErrorKind::INVALID_INPUT`), not the number.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u32);

impl std::fmt::Debug for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match *self {
            ErrorKind::FAILED => "FAILED",
            ErrorKind::PANICKED => "PANICKED",
            ErrorKind::INVALID_INPUT => "INVALID_INPUT",
            ErrorKind::INVALID_OUTPUT => "INVALID_OUTPUT",
            ErrorKind::DENIED => "DENIED",
            ErrorKind::INVALID_CONFIG => "INVALID_CONFIG",
            ErrorKind(other) => return write!(f, "ErrorKind({other}, unknown: read as FAILED)"),
        };
        write!(f, "ErrorKind::{name}")
    }
}

impl ErrorKind {
    /// The plugin reported a failure.
    pub const FAILED: ErrorKind = ErrorKind(0);
    /// A hook panicked; the message is the panic's.
    pub const PANICKED: ErrorKind = ErrorKind(1);
    /// The batch could not be read as the plugin's input type.
    pub const INVALID_INPUT: ErrorKind = ErrorKind(2);
    /// The plugin's output could not be written as JSON.
    pub const INVALID_OUTPUT: ErrorKind = ErrorKind(3);
    /// A host service refused the call for lack of a permission.
    pub const DENIED: ErrorKind = ErrorKind(4);
    /// The config given to `init` could not be read.
    pub const INVALID_CONFIG: ErrorKind = ErrorKind(5);

    /// A lowercase name for the kind.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::PANICKED => "panicked",
            ErrorKind::INVALID_INPUT => "invalid input",
            ErrorKind::INVALID_OUTPUT => "invalid output",
            ErrorKind::DENIED => "permission denied",
            ErrorKind::INVALID_CONFIG => "invalid config",
            _ => "failed",
        }
    }
}

/// An error that crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What went wrong, in lowercase.
    pub message: RString,
}

/// How an invalid-input error about one record of the batch begins, before the
/// record's number.
const RECORD_PREFIX: &str = "record ";
/// What follows the record's number.
const RECORD_SUFFIX: &str = " of the batch: ";

impl PluginError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<RString>) -> Self {
        PluginError {
            kind,
            message: message.into(),
        }
    }

    /// An invalid-input error about one record of the batch, counted from 1: the
    /// SDK's answer when a record cannot be read as the plugin's input type. The
    /// message reads `record N of the batch: REASON`, for people, and
    /// [`PluginError::record`] reads the number back, so that a host can say where
    /// in its own input that record came from (`plugbay run` names the record and
    /// its line in the input file).
    pub fn invalid_record(record: u64, reason: impl std::fmt::Display) -> Self {
        PluginError::new(
            ErrorKind::INVALID_INPUT,
            format!("{RECORD_PREFIX}{record}{RECORD_SUFFIX}{reason}"),
        )
    }

    /// The record of the batch (counted from 1) an invalid-input error made by
    /// [`PluginError::invalid_record`] is about, and the reason; `None` for any other
    /// error.
    pub fn record(&self) -> Option<(u64, &str)> {
        if self.kind != ErrorKind::INVALID_INPUT {
            return None;
        }
        let rest = self.message.as_str().strip_prefix(RECORD_PREFIX)?;
        let (number, reason) = rest.split_once(RECORD_SUFFIX)?;
        if number.is_empty() || !number.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        let record = number.parse().ok().filter(|record| *record > 0)?;
        Some((record, reason))
    }
}

/// The message, after the kind's name when that adds something: a plain failure is
/// its message alone, and a message that starts with its kind's name
/// (`invalid config: …`) is not prefixed with it again.
impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.kind.name();
        if name == "failed" || self.message.starts_with(name) {
            f.write_str(&self.message)
        } else {
            write!(f, "{name}: {}", self.message)
        }
    }
}

impl std::error::Error for PluginError {}

#[cfg(test)]
mod tests {
    use super::{ErrorKind, PluginError};

    #[test]
    fn an_error_about_a_record_names_it() {
        let error = PluginError::invalid_record(3, "missing field `text`");
        assert_eq!(
            error.message.as_str(),
            "record 3 of the batch: missing field `text`"
        );
        assert_eq!(error.record(), Some((3, "missing field `text`")));
        for (kind, message) in [
            (ErrorKind::FAILED, "record 3 of the batch: x"),
            (ErrorKind::INVALID_INPUT, "record x of the batch: x"),
            (ErrorKind::INVALID_INPUT, "record 0 of the batch: x"),
            (ErrorKind::INVALID_INPUT, "record  of the batch: x"),
            (ErrorKind::INVALID_INPUT, "record 3 was odd"),
            (ErrorKind::INVALID_INPUT, "batch is not an array"),
        ] {
            assert_eq!(PluginError::new(kind, message).record(), None, "{message}");
        }
    }

    #[test]
    fn errors_read_without_numbers_or_repeated_prefixes() {
        let config = PluginError::new(
            ErrorKind::INVALID_CONFIG,
            "invalid config: expected a string",
        );
        assert_eq!(config.to_string(), "invalid config: expected a string");
        let input = PluginError::new(ErrorKind::INVALID_INPUT, "batch is not a JSON array");
        assert_eq!(
            input.to_string(),
            "invalid input: batch is not a JSON array"
        );
        let failed = PluginError::new(ErrorKind::FAILED, "cannot read lookup.json");
        assert_eq!(failed.to_string(), "cannot read lookup.json");
        let unknown = PluginError::new(ErrorKind(99), "from a newer plugin");
        assert_eq!(unknown.to_string(), "from a newer plugin");
        assert_eq!(
            format!("{input:?}"),
            "PluginError { kind: ErrorKind::INVALID_INPUT, message: \"batch is not a JSON array\" }"
        );
        assert_eq!(
            format!("{:?}", ErrorKind(99)),
            "ErrorKind(99, unknown: read as FAILED)"
        );
    }

    #[test]
    fn the_export_name_is_abi_stables() {
        assert_eq!(
            crate::__private::ROOT_MODULE_EXPORT_NAME,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
