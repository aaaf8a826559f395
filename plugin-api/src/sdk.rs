//! The safe authoring surface: [`Plugin`], [`Context`], [`Error`], and the adapter
//! that turns a `Plugin` into the ABI's [`PluginInstance`](crate::abi::PluginInstance).

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use abi_stable::library::{CheckTypeLayout, LibHeader, RootModuleResult};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, ROption, RResult, RSlice, RStr, RVec};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::abi::{
    ErrorKind, HostServicesBox, LogLevel, PluginBox, PluginContext, PluginError, PluginInstance,
    PluginInstance_TO, PluginMod, PluginModRef, API_VERSION,
};
use crate::logging;

/// A plugin: what `#[plugbay::plugin]` turns into an exported library.
///
/// The host builds the instance with [`Default`], then calls [`init`](Plugin::init)
/// once, [`process`](Plugin::process) once per batch, and [`cleanup`](Plugin::cleanup)
/// once at the end. A panic in any of them becomes an error for the host and marks
/// the instance failed; the host and the other plugins go on.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a Plugbay plugin: it does not implement `plugbay::Plugin`",
    label = "`#[plugbay::plugin]` needs `impl Plugin for {Self}`",
    note = "implement `Plugin` for it: `type Input`, `type Output` and `fn process(&mut self, ctx: &Context, batch: Vec<Self::Input>)`"
)]
pub trait Plugin: Default + Send + 'static {
    /// One input record: any serde type (`serde_json::Value` takes anything).
    type Input: DeserializeOwned;
    /// One output record.
    type Output: Serialize;

    /// Called once before any batch, with the plugin's id, config and host services.
    ///
    /// List `init` in plugin.json's `hooks` when you implement it (the host calls it
    /// either way; an implementation the manifest does not list is logged as a
    /// warning, so that the manifest says what the plugin does).
    fn init(&mut self, ctx: &Context) -> Result<(), Error> {
        ctx.default_hook_ran(DEFAULT_INIT);
        Ok(())
    }

    /// Turns one batch of records into another (of any length).
    fn process(
        &mut self,
        ctx: &Context,
        batch: Vec<Self::Input>,
    ) -> Result<Vec<Self::Output>, Error>;

    /// Called once at the end; a good place to report what the instance saw.
    ///
    /// List `cleanup` in plugin.json's `hooks` when you implement it (as for
    /// [`init`](Plugin::init)).
    fn cleanup(&mut self, ctx: &Context) -> Result<(), Error> {
        ctx.default_hook_ran(DEFAULT_CLEANUP);
        Ok(())
    }
}

/// A plugin's error: a message for the host, and what kind of failure it is.
///
/// Anything that implements `std::error::Error` converts into it with `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// A failure with `message`.
    pub fn new(message: impl fmt::Display) -> Self {
        Error {
            kind: ErrorKind::FAILED,
            message: message.to_string(),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether a host service refused the call for lack of a permission.
    pub fn is_denied(&self) -> bool {
        self.kind == ErrorKind::DENIED
    }

    fn from_abi(error: PluginError) -> Self {
        Error {
            kind: error.kind,
            message: error.message.into(),
        }
    }

    fn into_abi(self) -> PluginError {
        PluginError::new(self.kind, self.message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        Error::new(error)
    }
}

/// A log level for [`Context::log`].
pub type Level = LogLevel;

/// What the host gives a plugin: its id, its config and the host services.
///
/// Every hook receives it. Host services are permission-checked by the host: without
/// `read:data` a [`store_get`](Context::store_get) returns an error for which
/// [`Error::is_denied`] is true.
///
/// A clone shares the same host services and may move into a thread the plugin
/// starts. The services end with the instance: once the host has run `cleanup` (or
/// given up on the instance), every call through any clone returns an error for
/// which [`Error::is_denied`] is true, and log lines are dropped.
pub struct Context {
    plugin_id: String,
    config: serde_json::Value,
    plugin_dir: PathBuf,
    data_dir: PathBuf,
    services: HostServicesBox,
    /// The most verbose level the host records; `None`: nothing.
    log_level: Option<Level>,
    /// Which of `Plugin`'s default hooks ran through this context ([`DEFAULT_INIT`],
    /// [`DEFAULT_CLEANUP`]): how the SDK tells a hook the plugin implements.
    default_hooks: AtomicU8,
}

/// `Plugin::init`'s default ran.
const DEFAULT_INIT: u8 = 1;
/// `Plugin::cleanup`'s default ran.
const DEFAULT_CLEANUP: u8 = 2;

impl Clone for Context {
    fn clone(&self) -> Self {
        Context {
            plugin_id: self.plugin_id.clone(),
            config: self.config.clone(),
            plugin_dir: self.plugin_dir.clone(),
            data_dir: self.data_dir.clone(),
            // Another reference to the host's services object (its count goes up).
            services: HostServicesBox::from_sabi(self.services.obj.shallow_clone()),
            log_level: self.log_level,
            default_hooks: AtomicU8::new(0),
        }
    }
}

impl Context {
    fn default_hook_ran(&self, hook: u8) {
        self.default_hooks.fetch_or(hook, Ordering::Relaxed);
    }

    /// Whether the plugin implements the hook whose default is `hook`: its default
    /// did not run when the hook was called.
    fn implements(&self, hook: u8) -> bool {
        self.default_hooks.load(Ordering::Relaxed) & hook == 0
    }

    /// Warns when the plugin implements a hook its manifest does not list.
    fn warn_if_undeclared(&self, hook: u8, name: &str, declared: bool) {
        if !declared && self.implements(hook) {
            self.warn(format_args!(
                "the plugin implements `Plugin::{name}`, but its plugin.json does not list `{name}` in `hooks`; add it, so that the manifest says what the plugin does"
            ));
        }
    }

    /// The plugin's id, `name@version`.
    pub fn plugin_id(&self) -> &str {
        &self.plugin_id
    }

    /// The plugin's own directory, where its manifest and shipped files live
    /// (`${plugin_dir}` in permissions).
    pub fn plugin_dir(&self) -> &Path {
        &self.plugin_dir
    }

    /// The directory the host gives plugins for their data (`${data_dir}` in
    /// permissions).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The whole config (a JSON object; empty if the host gave none).
    pub fn config_value(&self) -> &serde_json::Value {
        &self.config
    }

    /// The config as a typed value. An error's message starts with `invalid config:`.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.config).map_err(|err| Error {
            kind: ErrorKind::INVALID_CONFIG,
            message: format!("invalid config: {err}"),
        })
    }

    /// One field of the config, if present.
    pub fn config_field<T: DeserializeOwned>(&self, field: &str) -> Result<Option<T>, Error> {
        match self.config.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => T::deserialize(value).map(Some).map_err(|err| Error {
                kind: ErrorKind::INVALID_CONFIG,
                message: format!("invalid config field `{field}`: {err}"),
            }),
        }
    }

    /// Writes `message` into the host's log at `level`, tagged with the plugin id.
    /// A message at a level the host does not record is dropped before it is
    /// formatted.
    ///
    /// The `log` and `tracing` crates' macros (`log::info!`, `tracing::debug!`) reach
    /// the same log, tagged with the module that wrote them, from any thread of the
    /// plugin: the SDK bridges both when the plugin starts.
    pub fn log(&self, level: Level, message: impl fmt::Display) {
        if self.log_enabled(level) {
            self.services.log(
                level,
                RStr::from_str(""),
                RStr::from_str(&message.to_string()),
            );
        }
    }

    /// Whether the host records lines at `level` from this plugin (its subscriber's
    /// level when the plugin started).
    pub fn log_enabled(&self, level: Level) -> bool {
        self.log_level.is_some_and(|recorded| level >= recorded)
    }

    /// Logs at debug level.
    pub fn debug(&self, message: impl fmt::Display) {
        self.log(Level::Debug, message);
    }

    /// Logs at info level.
    pub fn info(&self, message: impl fmt::Display) {
        self.log(Level::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(&self, message: impl fmt::Display) {
        self.log(Level::Warn, message);
    }

    /// Logs at error level.
    pub fn error(&self, message: impl fmt::Display) {
        self.log(Level::Error, message);
    }

    /// Reads `key` from the host's data store (needs `read:data`).
    pub fn store_get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.services.store_get(RStr::from_str(key)) {
            ROk(ROption::RSome(value)) => Ok(Some(value.into_vec())),
            ROk(ROption::RNone) => Ok(None),
            RErr(error) => Err(Error::from_abi(error)),
        }
    }

    /// Writes `value` under `key` in the host's data store (needs `write:data`).
    pub fn store_put(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.services
            .store_put(RStr::from_str(key), RSlice::from_slice(value))
            .into_result()
            .map_err(Error::from_abi)
    }

    /// Removes `key` from the host's data store (needs `write:data`); says whether it
    /// was there.
    pub fn store_delete(&self, key: &str) -> Result<bool, Error> {
        self.services
            .store_delete(RStr::from_str(key))
            .into_result()
            .map_err(Error::from_abi)
    }
}

/// What `#[plugbay::plugin]` implements for the plugin type.
#[doc(hidden)]
pub trait Export: 'static {
    /// The validated manifest, as compact JSON.
    const MANIFEST: &'static str;
    /// Whether the manifest lists the `init` hook.
    const DECLARES_INIT: bool;
    /// Whether the manifest lists the `cleanup` hook.
    const DECLARES_CLEANUP: bool;
    /// Whether the library's `#[global_allocator]` is the SDK's (not opted out with
    /// `global_allocator = false`).
    const SDK_ALLOCATOR: bool;
}

/// The exported header of a plugin library of type `P`.
#[doc(hidden)]
pub const fn lib_header<P: Export + Plugin>() -> LibHeader {
    // SAFETY: `from_constructor::<PluginModRef>` requires that the constructor returns
    // the root module of type `PluginModRef`, which `load_root::<P>` does.
    unsafe { LibHeader::from_constructor::<PluginModRef>(load_root::<P>, CheckTypeLayout::Yes) }
}

extern "C" fn load_root<P: Export + Plugin>() -> RootModuleResult {
    abi_stable::library::__call_root_module_loader(root_module::<P>)
}

fn root_module<P: Export + Plugin>() -> PluginModRef {
    let module = PluginMod {
        api_version: RStr::from_str(API_VERSION),
        manifest: RStr::from_str(P::MANIFEST),
        panic_unwind: cfg!(panic = "unwind"),
        new: new_instance::<P>,
    };
    module.leak_into_prefix()
}

extern "C" fn new_instance<P: Export + Plugin>() -> RResult<PluginBox, PluginError> {
    guard("the constructor", || {
        Ok(PluginInstance_TO::from_value(
            Adapter::<P> {
                plugin: Some(P::default()),
                context: None,
                instance: logging::next_instance(),
                sdk_allocator: P::SDK_ALLOCATOR,
            },
            TD_Opaque,
        ))
    })
}

/// Runs `body`, turning a panic into a [`PluginError`] of kind `PANICKED`.
///
/// Nothing the plugin's code does may unwind out of here: the caller is an
/// `extern "C"` function, and a panic leaving one ends the host. So the panic's
/// payload is dropped under `catch_unwind` too (a payload's own `Drop` may panic).
fn guard<T>(hook: &str, body: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result.into(),
        Err(payload) => {
            let error = PluginError::new(
                ErrorKind::PANICKED,
                format!("{hook} panicked: {}", panic_message(payload.as_ref())),
            );
            drop_contained(payload);
            RErr(error)
        }
    }
}

/// Drops `value` where a panic in its `Drop` cannot escape: if dropping it panics,
/// that panic's payload is leaked rather than dropped (its `Drop` could panic in
/// turn, without end).
fn drop_contained<T>(value: T) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        std::mem::forget(payload);
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "a panic with a non-string payload"
    }
}

/// Whether `bytes` are the empty array `[]`, with JSON whitespace around it: read
/// without a parse (any other spelling is left to serde, which refuses no bytes).
fn is_empty_array(bytes: &[u8]) -> bool {
    let is_json_space = |byte: &u8| matches!(byte, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes.iter().position(|byte| !is_json_space(byte));
    let end = bytes.iter().rposition(|byte| !is_json_space(byte));
    match (start, end) {
        (Some(start), Some(end)) => &bytes[start..=end] == b"[]",
        _ => false,
    }
}

/// Reads a batch as records of `T`. A record that does not read as `T` is named by
/// its place in the batch ([`PluginError::invalid_record`]), never by a line and
/// column of the batch's bytes, which are the host's and mean nothing to the
/// person who wrote the records.
fn read_records<T: DeserializeOwned>(input: &[u8]) -> Result<Vec<T>, PluginError> {
    let mut place = Place::default();
    let mut deserializer = serde_json::Deserializer::from_slice(input);
    let result = serde::de::DeserializeSeed::deserialize(
        Records::<T> {
            place: &mut place,
            records: std::marker::PhantomData,
        },
        &mut deserializer,
    )
    .and_then(|records| deserializer.end().map(|()| records));
    result.map_err(|err| {
        let reason = without_position(&err);
        if place.in_array && err.is_data() {
            PluginError::invalid_record(place.read + 1, reason)
        } else {
            PluginError::new(
                ErrorKind::INVALID_INPUT,
                format!("batch is not a JSON array of this plugin's records: {reason}"),
            )
        }
    })
}

/// How far [`Records`] got.
#[derive(Default)]
struct Place {
    /// The batch is an array.
    in_array: bool,
    /// Records read so far.
    read: u64,
}

/// A batch, read record by record, counting.
struct Records<'a, T> {
    place: &'a mut Place,
    records: std::marker::PhantomData<T>,
}

impl<'de, T: serde::Deserialize<'de>> serde::de::DeserializeSeed<'de> for Records<'_, T> {
    type Value = Vec<T>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Records<'_, T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        self.place.in_array = true;
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(record) = seq.next_element()? {
            records.push(record);
            self.place.read += 1;
        }
        Ok(records)
    }
}

/// serde_json's message without the position it appends (` at line L column C`).
fn without_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let position = format!(" at line {} column {}", err.line(), err.column());
    match text.strip_suffix(&position) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

/// Writes `records` as one JSON array into `output`, which is cleared first (`[]` for
/// no records, see `PluginInstance::process`). A buffer with less room than the
/// output is likely to take (about the input's size) grows once, up front.
fn write_records<T: Serialize>(
    records: &[T],
    input_len: usize,
    output: &mut RVec<u8>,
) -> Result<(), PluginError> {
    output.clear();
    if records.is_empty() {
        output.extend_from_slice(b"[]");
        return Ok(());
    }
    output.reserve(input_len + input_len / 4 + 2);
    serde_json::to_writer(&mut *output, records).map_err(|err| {
        output.clear();
        PluginError::new(
            ErrorKind::INVALID_OUTPUT,
            format!("output records could not be written as JSON: {err}"),
        )
    })
}

struct Adapter<P> {
    /// `None` only while the adapter is being dropped.
    plugin: Option<P>,
    context: Option<Context>,
    /// This instance's number among the library's, for the log bridge.
    instance: u64,
    /// The library allocates with the SDK's allocator ([`Export::SDK_ALLOCATOR`]).
    sdk_allocator: bool,
}

/// The plugin of an adapter that is not being dropped.
fn live<P>(plugin: &mut Option<P>) -> Result<&mut P, PluginError> {
    plugin
        .as_mut()
        .ok_or_else(|| PluginError::new(ErrorKind::FAILED, "the plugin was dropped"))
}

/// The host drops the instance through an `extern "C"` function of abi_stable's, which
/// ends the process if a panic leaves it: the plugin's own `Drop` runs under
/// `catch_unwind`, and whatever a panic in it left undropped is leaked.
impl<P> Drop for Adapter<P> {
    fn drop(&mut self) {
        let _running = logging::running(self.instance);
        drop_contained(self.plugin.take());
        logging::detach(self.instance);
        drop_contained(self.context.take());
        if self.sdk_allocator {
            release_free_memory();
        }
    }
}

/// Gives the memory the library's allocator holds free back to the system, on the
/// thread that drops an instance (its worker thread). Without it a library the host
/// no longer runs (a version retired by an upgrade, which stays mapped) would keep,
/// for good, the pages its last batches freed: its allocator returns them only when
/// the library allocates again, and nothing of it runs again.
fn release_free_memory() {
    // SAFETY: `mi_collect` has no preconditions: it frees what is pending and returns
    // to the system pages that hold no live block, under mimalloc's own locks; blocks
    // still in use are not touched.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn initialized<'a>(context: &'a Option<Context>, hook: &str) -> Result<&'a Context, PluginError> {
    context.as_ref().ok_or_else(|| {
        PluginError::new(ErrorKind::FAILED, format!("`{hook}` called before `init`"))
    })
}

impl<P: Plugin + Export> Adapter<P> {
    /// `process`: reads the batch's records, runs the plugin on them and writes its
    /// records into `output`.
    fn process_records(&mut self, input: &[u8], output: &mut RVec<u8>) -> RResult<(), PluginError> {
        let _running = logging::running(self.instance);
        guard("process", || {
            let context = initialized(&self.context, "process")?;
            let records: Vec<P::Input> = if is_empty_array(input) {
                Vec::new()
            } else {
                read_records(input)?
            };
            let records = live(&mut self.plugin)?
                .process(context, records)
                .map_err(Error::into_abi)?;
            write_records(&records, input.len(), output)
        })
    }
}

impl<P: Plugin + Export> PluginInstance for Adapter<P> {
    fn init(&mut self, context: PluginContext) -> RResult<(), PluginError> {
        let _running = logging::running(self.instance);
        guard("init", || {
            let config = if context.config.trim().is_empty() {
                serde_json::Value::Object(Default::default())
            } else {
                serde_json::from_str(&context.config).map_err(|err| {
                    PluginError::new(
                        ErrorKind::INVALID_CONFIG,
                        format!("config is not JSON: {err}"),
                    )
                })?
            };
            let log_level = context.log_level.into_option();
            logging::attach(
                self.instance,
                HostServicesBox::from_sabi(context.services.obj.shallow_clone()),
                log_level,
            );
            let context = self.context.insert(Context {
                plugin_id: context.plugin_id.into(),
                config,
                plugin_dir: PathBuf::from(context.plugin_dir.as_str()),
                data_dir: PathBuf::from(context.data_dir.as_str()),
                services: context.services,
                log_level,
                default_hooks: AtomicU8::new(0),
            });
            let result = live(&mut self.plugin)?.init(context);
            context.warn_if_undeclared(DEFAULT_INIT, "init", P::DECLARES_INIT);
            result.map_err(Error::into_abi)
        })
    }

    fn process(&mut self, batch: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        let mut output = RVec::new();
        match self.process_records(batch.as_slice(), &mut output) {
            ROk(()) => ROk(output),
            RErr(error) => RErr(error),
        }
    }

    fn process_into(
        &mut self,
        batch: RSlice<'_, u8>,
        output: &mut RVec<u8>,
    ) -> RResult<(), PluginError> {
        self.process_records(batch.as_slice(), output)
    }

    fn cleanup(&mut self) -> RResult<(), PluginError> {
        let _running = logging::running(self.instance);
        let result = guard("cleanup", || {
            let context = initialized(&self.context, "cleanup")?;
            let result = live(&mut self.plugin)?.cleanup(context);
            context.warn_if_undeclared(DEFAULT_CLEANUP, "cleanup", P::DECLARES_CLEANUP);
            result.map_err(Error::into_abi)
        });
        // The host ends this instance's services when cleanup returns.
        logging::detach(self.instance);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::{is_empty_array, read_records, write_records};
    use abi_stable::std_types::RVec;

    #[test]
    fn a_reused_output_buffer_holds_only_the_last_batch() {
        let mut output = RVec::new();
        let many: Vec<u32> = (0..1_000).collect();
        write_records(&many, 10, &mut output).unwrap();
        assert_eq!(output.len(), serde_json::to_vec(&many).unwrap().len());
        let capacity = output.capacity();
        write_records(&[7u32], 3, &mut output).unwrap();
        assert_eq!(output.as_slice(), b"[7]");
        assert_eq!(
            output.capacity(),
            capacity,
            "the buffer is reused, not replaced"
        );
        write_records::<u32>(&[], 3, &mut output).unwrap();
        assert_eq!(output.as_slice(), b"[]");
        // A record that cannot be written leaves nothing of the batch before it.
        write_records(&[1u32], 3, &mut output).unwrap();
        let unwritable = [std::collections::HashMap::from([((1, 2), 3)])];
        let error = write_records(&unwritable, 3, &mut output).unwrap_err();
        assert!(error.message.contains("could not be written as JSON"));
        assert!(output.is_empty());
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Record {
        text: String,
    }

    #[test]
    fn a_record_that_does_not_read_is_named_by_its_place() {
        let records: Vec<Record> = read_records(br#"[{"text": "a"}, {"text": "b"}]"#).unwrap();
        assert_eq!(records.len(), 2);
        let error = read_records::<Record>(br#"[{"text": "a"}, {"txt": "b"}, {}]"#).unwrap_err();
        assert_eq!(error.record(), Some((2, "missing field `text`")));
        let error = read_records::<Record>(b"[1, 2]").unwrap_err();
        assert_eq!(
            error.message.as_str(),
            "record 1 of the batch: invalid type: integer `1`, expected struct Record"
        );
        let error = read_records::<Record>(br#"{"text": "a"}"#).unwrap_err();
        assert_eq!(error.record(), None);
        assert_eq!(
            error.message.as_str(),
            "batch is not a JSON array of this plugin's records: invalid type: map, expected a JSON array of records"
        );
    }

    #[test]
    fn empty_arrays_are_recognised_without_parsing() {
        assert!(is_empty_array(b"[]"));
        assert!(is_empty_array(b" [] \n"));
        assert!(!is_empty_array(b""), "no bytes are not a batch");
        assert!(!is_empty_array(b"  "));
        assert!(
            !is_empty_array(b"\x0c[]"),
            "form feed is not JSON whitespace"
        );
        assert!(!is_empty_array(b"[1]"));
        assert!(!is_empty_array(b"{}"));
    }
}
