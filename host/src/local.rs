//! Local plugins: instances that run on the calling thread, with no worker and no
//! hand-off — a `process` call is a function call through the ABI.
//!
//! # The calling thread is confined for good
//!
//! [`Host::start_local`] and [`Host::start_local_all`] confine **the thread that calls
//! them** with landlock before they open any library, exactly as a worker thread
//! confines itself. Landlock cannot be lifted: from then on that thread (and every
//! thread it spawns, plugin workers included) can open only what the plugins were
//! granted, for as long as it lives. Call them on a thread you dedicate to the plugins,
//! never on `main` or on a thread pool's thread.
//!
//! A thread is confined once: start every local plugin it will run in one
//! [`Host::start_local_all`] call. They then share one confinement, the union of
//! their grants (each may touch what any of them was granted). A second call on the
//! same thread is refused with [`StartError::AlreadyConfined`].
//!
//! # Limitations
//!
//! A local call has no deadline: nothing can interrupt the calling thread while the
//! plugin runs, so a plugin that hangs hangs the caller, and so does one whose
//! `Drop` blocks when the [`LocalPlugin`] is dropped. A [`LocalPlugin`] cannot be
//! sent to another thread (it would run unconfined there). Use [`Host::start`] and
//! [`PluginHandle`](crate::PluginHandle) unless you need the last nanoseconds per call
//! (see BENCHMARKS.md: a worker round trip costs microseconds, a local call tens of
//! nanoseconds).

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

use abi_stable::std_types::RResult;
use plugbay_api::abi::{ErrorKind, PluginBox, PluginError};
use plugbay_api::manifest::Hook;

use crate::batch::{Batch, Outputs};
use crate::call::{load_and_init, process_here, Outcome};
use crate::grants;
use crate::hints;
use crate::isolation::Isolation;
use crate::runtime::{CallError, Host, PluginSpec, PluginStatus, Prepared, StartError, State};
use crate::sandbox::{self, Rules};
use crate::services::Revoker;

thread_local! {
    /// The ids of the local plugins this thread was confined for, if any.
    static CONFINED_FOR: RefCell<Option<String>> = const { RefCell::new(None) };
}

impl Host {
    /// Starts a plugin instance **on the calling thread**, and confines the calling
    /// thread for good.
    ///
    /// The thread confines itself with landlock to what the plugin is granted, then
    /// opens and checks the library, builds the instance and calls `init`, as
    /// [`start`](Host::start) does on a worker thread. The confinement is never lifted
    /// and is inherited by threads this thread spawns: run this on a thread dedicated
    /// to the plugin. See the [module docs](crate::local) for the limits (no deadline,
    /// one confinement per thread).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use plugbay_host::{Batch, Host, PluginSpec};
    ///
    /// let host = Host::new();
    /// let spec = PluginSpec::from_manifest_file("example-plugins/data-processor/plugin.json")?;
    /// let output = std::thread::spawn(move || -> Result<Batch, Box<dyn std::error::Error + Send + Sync>> {
    ///     // This thread is confined from here on.
    ///     let mut plugin = host.start_local(spec)?;
    ///     Ok(plugin.process(&Batch::from_json(r#"[{"id": 1}]"#))?)
    /// })
    /// .join()
    /// .expect("the plugin thread ran")?;
    /// assert_eq!(output.len(), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn start_local(&self, spec: PluginSpec) -> Result<LocalPlugin, StartError> {
        let mut plugins = self.start_local_all(vec![spec])?;
        Ok(plugins
            .pop()
            .expect("start_local_all starts one plugin per spec"))
    }

    /// Starts several plugin instances on the calling thread, in order, under one
    /// confinement (the union of their grants), and confines the calling thread for
    /// good. See [`start_local`](Host::start_local).
    ///
    /// If one fails to start, those started before it are cleaned up; the thread
    /// stays confined.
    pub fn start_local_all(&self, specs: Vec<PluginSpec>) -> Result<Vec<LocalPlugin>, StartError> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let ids = specs
            .iter()
            .map(|spec| spec.manifest.id())
            .collect::<Vec<_>>()
            .join(", ");
        // A confined thread can no longer read libraries: refuse before trying.
        if let Some(running) = CONFINED_FOR.with(|confined| confined.borrow().clone()) {
            return Err(StartError::AlreadyConfined { ids, running });
        }
        let prepared = specs
            .into_iter()
            .map(|spec| self.prepare(spec))
            .collect::<Result<Vec<Prepared>, StartError>>()?;
        let (rules, prepared): (Vec<Rules>, Vec<_>) = prepared
            .into_iter()
            .map(|mut plugin| (std::mem::take(&mut plugin.rules), plugin))
            .unzip();
        let rules = Rules::union(rules);
        // Every library loads the copy that belongs to the thread's one confinement.
        let granted: Vec<_> = prepared
            .iter()
            .flat_map(|plugin| plugin.granted.iter().cloned())
            .collect();
        let images = prepared
            .iter()
            .map(|plugin| {
                let key = grants::Key::of(&granted, &rules, &plugin.image.path);
                grants::image_for(&plugin.id, &plugin.image, key)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let confinement = sandbox::confine_current_thread(&ids, &rules, self.sandbox_mode())?;
        CONFINED_FOR.with(|confined| *confined.borrow_mut() = Some(ids));

        let mut plugins = Vec::with_capacity(prepared.len());
        for (plugin, image) in prepared.into_iter().zip(images) {
            let services = plugin.services;
            let (instance, api_version) =
                load_and_init(&plugin.id, &image, &plugin.manifest, plugin.context).map_err(
                    |err| {
                        services.revoke();
                        let (granted, withheld) = (&plugin.granted, &plugin.withheld);
                        hints::on_start_error(err, granted, withheld, Isolation::Thread)
                    },
                )?;
            tracing::debug!(plugin = %plugin.id, %confinement, "local plugin started");
            plugins.push(LocalPlugin {
                // Local calls have no deadline.
                status: PluginStatus {
                    withheld: plugin.withheld,
                    ..PluginStatus::started(
                        plugin.id,
                        confinement.clone(),
                        plugin.granted,
                        &api_version,
                        &plugin.image,
                        std::time::Duration::MAX,
                    )
                },
                may_process: plugin.may_process,
                instance: Some(instance),
                outputs: Outputs::default(),
                services,
                _confined_thread: PhantomData,
            });
        }
        Ok(plugins)
    }
}

/// A plugin instance running on the thread that started it (see
/// [`Host::start_local`]).
///
/// Its [`status`](LocalPlugin::status) reads as a worker's does, except that
/// `timeout` is [`Duration::MAX`](std::time::Duration::MAX) (a local call has no
/// deadline) and `busy` stays zero (timing each call would cost more than the call).
///
/// # Thread-safety
///
/// Neither `Send` nor `Sync`: the instance must run on the thread that was confined
/// for it. Dropping it cleans the instance up.
pub struct LocalPlugin {
    status: PluginStatus,
    may_process: Result<(), &'static str>,
    /// `None` once the instance is dropped, or forgotten after a panic.
    instance: Option<PluginBox>,
    /// The buffers the instance writes its outputs into, reused from batch to batch.
    outputs: Outputs,
    /// Revoked when `cleanup` returns and when the instance goes.
    services: Revoker,
    /// Keeps the plugin on its confined thread.
    _confined_thread: PhantomData<*const ()>,
}

impl fmt::Debug for LocalPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalPlugin")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl LocalPlugin {
    /// The plugin's id, `name@version`.
    pub fn id(&self) -> &str {
        &self.status.id
    }

    /// The instance's status: state, confinement, grants and counters.
    pub fn status(&self) -> &PluginStatus {
        &self.status
    }

    /// Calls the plugin's `process` hook on this thread. `batch` stays the caller's
    /// whatever happens. There is no deadline.
    pub fn process(&mut self, batch: &Batch) -> Result<Batch, CallError> {
        self.status.permit(self.may_process)?;
        let instance = instance_for_call(&self.status, &mut self.instance)?;
        let result = process_here(instance, batch, &mut self.outputs);
        if matches!(&result, Err(Outcome::Plugin(error)) if error.kind == ErrorKind::PANICKED) {
            self.forget_instance();
        }
        self.status.processed(result)
    }

    /// Runs the plugin's `cleanup` hook; the instance takes no more calls after it.
    pub fn cleanup(&mut self) -> Result<(), CallError> {
        let result = instance_for_call(&self.status, &mut self.instance)?.cleanup();
        self.services.revoke();
        self.status.state = State::CleanedUp;
        match result {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(error) => Err(self.plugin_error(Hook::Cleanup, error)),
        }
    }

    /// Runs `cleanup` and drops the instance. Returns the final status.
    pub fn shutdown(mut self) -> Result<PluginStatus, CallError> {
        let result = self.cleanup();
        self.unload();
        result.map(|()| self.status.clone())
    }

    fn plugin_error(&mut self, hook: Hook, error: PluginError) -> CallError {
        if error.kind == ErrorKind::PANICKED {
            self.forget_instance();
        }
        self.status.hook_error(hook, error)
    }

    /// After a panic the instance's state is unknown: never call or drop it again.
    fn forget_instance(&mut self) {
        std::mem::forget(self.instance.take());
        self.services.revoke();
    }

    /// Drops the instance: the host calls its code no more, and its host services
    /// end (threads the plugin started run on).
    fn unload(&mut self) {
        drop(self.instance.take());
        self.services.revoke();
        if !matches!(self.status.state, State::Failed(_)) {
            self.status.state = State::Unloaded;
        }
    }
}

impl Drop for LocalPlugin {
    fn drop(&mut self) {
        if matches!(self.status.state, State::Initialized | State::Running) {
            if let Err(err) = self.cleanup() {
                tracing::warn!(plugin = %self.status.id, error = %err, "cleanup failed while dropping the local plugin");
            }
        }
        self.unload();
    }
}

/// The instance, if it takes calls.
fn instance_for_call<'a>(
    status: &PluginStatus,
    instance: &'a mut Option<PluginBox>,
) -> Result<&'a mut PluginBox, CallError> {
    let id = &status.id;
    match &status.state {
        State::Failed(failure) => Err(CallError::Failed {
            id: id.clone(),
            reason: failure.to_string(),
        }),
        State::CleanedUp | State::Unloaded => Err(CallError::Stopped { id: id.clone() }),
        State::Initialized | State::Running => {
            instance.as_mut().ok_or_else(|| CallError::Stopped {
                id: status.id.clone(),
            })
        }
    }
}
