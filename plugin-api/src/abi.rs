//! The stable ABI between a Plugbay host and its plugins.
//!
//! Everything here crosses the library boundary, so every type is `#[repr(C)]` and
//! derives [`StableAbi`]: the host checks the layout of the whole module, field by
//! field, before it calls anything.
//!
//! # Compatibility
//!
//! The root module is a prefix type and is frozen: new capabilities come as optional
//! modules, never as changed fields. [`ABI_VERSION`] changes only on a real ABI break,
//! not with every release of this crate; the plugbay-api version a plugin was built
//! against travels separately in [`PluginMod::api_version`] and is checked by the host
//! with semver rules. No cargo feature may change a type in this module.
//!
//! Plugin authors never use this module directly: `#[plugbay::plugin]` generates it.

// abi_stable's `sabi_trait` expands to impls inside a const block.
#![allow(non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, sabi_trait, StableAbi};

/// The version of the binary interface. It changes only when a type in this module
/// changes incompatibly; abi_stable refuses a library whose ABI version differs.
pub const ABI_VERSION: &str = "0.1.0";

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
    /// An empty vector (no bytes at all) stands for the empty batch `[]`, so that
    /// returning no records costs no allocation. Hosts read it as `[]`; they always
    /// send at least `[]`, and the SDK reads no bytes as `[]` too.
    fn process(&mut self, batch: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;

    /// `cleanup()`: the last call an instance receives.
    #[sabi(last_prefix_field)]
    fn cleanup(&mut self) -> RResult<(), PluginError>;
}

/// The SDK's mark on the batches it writes, so that hosts need not check them again.
///
/// A host checks that each batch a plugin returns is one JSON array, and counts its
/// records: a second pass over every byte, which costs about a fifth of what a simple
/// plugin does with the batch. A batch the SDK wrote cannot fail that check (serde
/// wrote it from a `Vec`), so the SDK appends a mark that says so and carries the
/// record count: a line of [`LEN`](mark::LEN) spaces and tabs after the closing `]`.
/// The batch stays one valid JSON array (trailing whitespace is allowed), so any
/// reader still parses it; a host that reads the mark skips its check and strips the
/// mark. A plugin that writes its own bytes has no mark, and is checked in full.
///
/// The mark is not a security boundary: native code can write anything, including a
/// false mark. It tells a host which bytes serde wrote, as the author of an SDK
/// plugin could by turning the host's output check off.
pub mod mark {
    /// The bytes a mark adds to a batch.
    pub const LEN: usize = 1 + MAGIC_BITS + COUNT_BITS;

    /// The mark starts with these bits (`plugbay!`), a space for 0 and a tab for 1.
    const MAGIC: u64 = u64::from_be_bytes(*b"plugbay!");
    const MAGIC_BITS: usize = 64;
    const COUNT_BITS: usize = 48;

    fn push_bits(bytes: &mut Vec<u8>, value: u64, bits: usize) {
        bytes.extend(
            (0..bits)
                .rev()
                .map(|bit| if value >> bit & 1 == 1 { b'\t' } else { b' ' }),
        );
    }

    fn read_bits(bytes: &[u8]) -> Option<u64> {
        bytes.iter().try_fold(0u64, |value, byte| match byte {
            b' ' => Some(value << 1),
            b'\t' => Some(value << 1 | 1),
            _ => None,
        })
    }

    /// Appends the mark for `records` records to a JSON array that serde wrote.
    pub fn append(json: &mut Vec<u8>, records: usize) {
        json.reserve(LEN);
        json.push(b'\n');
        push_bits(json, MAGIC, MAGIC_BITS);
        push_bits(json, records as u64, COUNT_BITS);
    }

    /// If `bytes` end with a mark: the length of the JSON before it, and the record
    /// count it carries.
    pub fn read(bytes: &[u8]) -> Option<(usize, usize)> {
        let json_len = bytes.len().checked_sub(LEN)?;
        let mark = &bytes[json_len..];
        if mark[0] != b'\n' || read_bits(&mark[1..=MAGIC_BITS])? != MAGIC {
            return None;
        }
        let records = read_bits(&mark[1 + MAGIC_BITS..])?;
        Some((json_len, usize::try_from(records).ok()?))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_mark_round_trips_and_keeps_the_json_valid() {
            let mut json = br#"[{"a":1},2]"#.to_vec();
            super::append(&mut json, 2);
            assert_eq!(json.len(), 11 + super::LEN);
            assert_eq!(super::read(&json), Some((11, 2)));
            let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(value.as_array().map(Vec::len), Some(2));
        }

        #[test]
        fn unmarked_bytes_have_no_mark() {
            assert_eq!(super::read(b"[1]"), None);
            let mut json = b"[1]".to_vec();
            super::append(&mut json, 1);
            let last = json.len() - 1;
            json[20] = b'x';
            assert_eq!(super::read(&json), None);
            json[20] = b' ';
            json[last] = b'x';
            assert_eq!(super::read(&json), None);
            assert_eq!(super::read(&[b' '; super::LEN + 3]), None);
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
}

/// A log level, as `tracing` has them.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Writes a line into the host's log, tagged with the plugin's id.
    fn log(&self, level: LogLevel, message: RStr<'_>);

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
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u32);

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

impl PluginError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<RString>) -> Self {
        PluginError {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message)
    }
}

impl std::error::Error for PluginError {}

#[cfg(test)]
mod tests {
    #[test]
    fn the_export_name_is_abi_stables() {
        assert_eq!(
            crate::__private::ROOT_MODULE_EXPORT_NAME,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
