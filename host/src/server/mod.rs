//! `plugbay serve`: the registry as a REST API.
//!
//! The routes are the seed's Plugins API — `GET /plugins`, `GET /plugins/{id}`,
//! `POST /plugins/register`, `PUT /plugins/{id}/enable`, `PUT /plugins/{id}/disable`,
//! `DELETE /plugins/{id}` — plus `POST /plugins/{id}/review`,
//! `POST /plugins/{id}/process`, `GET /health` and `GET /openapi.json` (see
//! [`openapi`]). The server works on the same SQLite registry as the CLI, at the
//! same time.
//!
//! # Security
//!
//! Every route but `/health` needs `Authorization: Bearer KEY`, a key created with
//! `plugbay keys create` ([`Registry::create_key`](crate::registry::Registry::create_key)),
//! stored as a hash and compared in constant time; keys are never logged. Each route
//! needs one scope (`plugins:read`, `plugins:write`, `plugins:review`,
//! `plugins:execute`; `plugins:install` and `plugins:publish` for the marketplace).
//! Errors are JSON: `{"error": {"code", "message", "field"?}}`.
//!
//! The server listens on 127.0.0.1 by default and speaks plain HTTP: put a TLS
//! proxy in front of it before listening on another address.
//!
//! # Connections
//!
//! hyper serves each connection behind a guard (`connection`) that closes
//! connections idle for [`ServeOptions::idle_timeout`], answers 408 to a request
//! head not in full within [`ServeOptions::header_timeout`], answers every head
//! hyper would refuse with a JSON error (400, 414, 431, 505) instead of hyper's
//! empty ones, and holds at most [`ServeOptions::max_connections`] connections (the
//! next gets 503). A shutdown closes at once the connections that answer no request.
//!
//! # Examples
//!
//! ```no_run
//! use plugbay_host::server::{ServeOptions, Server};
//!
//! let server = Server::bind(ServeOptions::new("/var/lib/plugbay"))?;
//! eprintln!("listening on http://{}", server.local_addr());
//! server.run_blocking()?; // until SIGINT or SIGTERM
//! # Ok::<(), plugbay_host::server::ServerError>(())
//! ```
//!
//! # Limitations
//!
//! Plugin instances run in the server's process (confined per thread with landlock,
//! as everywhere in Plugbay): a plugin that aborts or segfaults ends the server. A
//! plugin that hangs costs a worker thread that is abandoned at its deadline and may
//! never return; failed instances are restarted with a backoff and at most
//! [`RestartPolicy::max_abandoned`] stuck workers per plugin, so the number of such
//! threads stays bounded. `GET /plugins/{id}` shows a plugin's restarts, last
//! failure and abandoned workers.

mod body;
mod connection;
mod error;
mod handlers;
mod instances;
#[cfg(feature = "market")]
mod market;
mod middleware;
mod openapi;
mod pool;
mod routes;
mod upgrades;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use crate::registry::{Registry, RegistryError};
use crate::runtime::Host;
use crate::sandbox::SandboxMode;
use instances::Instances;
pub use instances::RestartPolicy;
use pool::Registries;
use routes::{Access, Operation, ROUTES};
use upgrades::Upgrades;

pub use connection::{
    DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, MAX_HEAD, MAX_HEADERS,
    MAX_REQUEST_LINE,
};

/// Where the server listens unless told otherwise: `127.0.0.1:7070`.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7070));

/// The largest request body accepted unless told otherwise (16 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// How long a request may take unless told otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The registry's home (`$PLUGBAY_HOME`, `--home`).
    pub home: PathBuf,
    /// Where to listen ([`DEFAULT_ADDR`]; port 0 picks a free port).
    pub addr: SocketAddr,
    /// Start plugins even where the kernel cannot enforce their whole sandbox
    /// (`--allow-unconfined`); their status says so.
    pub allow_unconfined: bool,
    /// The largest request body, in bytes; larger ones get 413.
    pub body_limit: usize,
    /// How long a request may take; longer ones get 503 `request_timeout`.
    pub request_timeout: Duration,
    /// How long a connection may wait for a request's first byte, when it is new
    /// and between requests ([`DEFAULT_IDLE_TIMEOUT`]); then it is closed.
    pub idle_timeout: Duration,
    /// How long a request head may take from its first byte to its end
    /// ([`DEFAULT_HEADER_TIMEOUT`]); longer gets 408 `header_timeout`.
    pub header_timeout: Duration,
    /// How many connections are served at once ([`DEFAULT_MAX_CONNECTIONS`]); the
    /// next one gets 503 `too_many_connections`. Lowered to half the process's
    /// descriptor limit if that is lower, so that the server keeps descriptors for
    /// its registry, libraries and worker processes.
    pub max_connections: usize,
    /// The program plugins' worker processes run (process isolation); this
    /// executable if unset, whose `main` must call
    /// [`serve_worker_if_asked`](crate::serve_worker_if_asked) (the `plugbay` binary
    /// does).
    pub worker_program: Option<PathBuf>,
    /// When a failed plugin instance is started again.
    pub restarts: RestartPolicy,
}

impl ServeOptions {
    /// The defaults, for the registry in `home`.
    pub fn new(home: impl Into<PathBuf>) -> ServeOptions {
        ServeOptions {
            home: home.into(),
            addr: DEFAULT_ADDR,
            allow_unconfined: false,
            body_limit: DEFAULT_BODY_LIMIT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            worker_program: None,
            restarts: RestartPolicy::default(),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The registry could not be opened.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The home's data store could not be served.
    #[error(transparent)]
    DataStore(#[from] crate::StoreError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime could not be built.
    #[error("cannot start the server's runtime")]
    Runtime(#[source] std::io::Error),
    /// SIGINT/SIGTERM handlers could not be installed.
    #[error("cannot listen for SIGINT and SIGTERM")]
    Signal(#[source] std::io::Error),
    /// Serving connections failed.
    #[error("the server stopped with an error")]
    Serve(#[source] std::io::Error),
}

/// What every request shares.
pub(crate) struct App {
    registries: Registries,
    host: Host,
    instances: Instances,
    /// The version each plugin name is served with, and switches between versions.
    upgrades: Upgrades,
    body_limit: usize,
    request_timeout: Duration,
    openapi: serde_json::Value,
}

/// A bound server, not yet serving.
pub struct Server {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    app: Arc<App>,
    limits: connection::Limits,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("home", &self.app.registries.home())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens (and migrates) the registry and binds the address; connections wait in
    /// the backlog until [`run_until`](Server::run_until).
    pub fn bind(options: ServeOptions) -> Result<Server, ServerError> {
        let registry = Registry::open(&options.home)?;
        let sandbox = if options.allow_unconfined {
            SandboxMode::AllowDegraded
        } else {
            SandboxMode::Enforce
        };
        // Libraries registered over the API are inspected in worker processes, never
        // opened in the server; instances run where their review says.
        let mut host = Host::new()
            .with_data_dir(registry.data_dir())
            .with_store(registry.store()?)
            .with_sandbox(sandbox)
            .with_isolation(crate::Isolation::Process);
        if let Some(program) = &options.worker_program {
            host = host.with_worker_program(program);
        }
        let bind_error = |source| ServerError::Bind {
            addr: options.addr,
            source,
        };
        let listener = std::net::TcpListener::bind(options.addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        if !local_addr.ip().is_loopback() {
            tracing::warn!(%local_addr, "listening beyond loopback over plain HTTP: API keys cross the network unencrypted; put a TLS proxy in front");
        }
        let limits = connection::Limits {
            idle_timeout: options.idle_timeout,
            header_timeout: options.header_timeout,
            max_connections: connection_limit(options.max_connections),
            // The requests in flight finish within the request timeout; their
            // answers then have a few seconds to go out.
            shutdown_grace: options.request_timeout + Duration::from_secs(5),
        };
        Ok(Server {
            listener,
            local_addr,
            limits,
            app: Arc::new(App {
                registries: Registries::new(registry),
                host,
                instances: Instances::new(options.restarts),
                upgrades: Upgrades::default(),
                body_limit: options.body_limit,
                request_timeout: options.request_timeout,
                openapi: openapi::document(),
            }),
        })
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting connections, finishes
    /// the requests in flight, and drains, cleans up and stops every plugin instance.
    /// Must run inside a multi-threaded tokio runtime.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let listener =
            tokio::net::TcpListener::from_std(self.listener).map_err(ServerError::Serve)?;
        tracing::info!(addr = %self.local_addr, home = %self.app.registries.home().display(), "plugbay serve listening");
        connection::serve(listener, router(self.app.clone()), self.limits, shutdown).await;
        let addr = self.local_addr;
        tracing::info!(%addr, "stopped accepting requests; stopping plugin instances");
        let app = self.app.clone();
        let _ = tokio::task::spawn_blocking(move || {
            tracing::info_span!("shutdown", %addr).in_scope(|| app.instances.stop_all())
        })
        .await;
        Ok(())
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully as
    /// [`run_until`](Server::run_until) does.
    pub async fn run(self) -> Result<(), ServerError> {
        let signal = shutdown_signal()?;
        self.run_until(signal).await
    }

    /// [`run`](Server::run) on a tokio runtime of its own; blocks until the server
    /// has shut down.
    pub fn run_blocking(self) -> Result<(), ServerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("plugbay-serve")
            .build()
            .map_err(ServerError::Runtime)?;
        let served = runtime.block_on(self.run());
        runtime.shutdown_timeout(LEFTOVER_WAIT);
        served
    }
}

impl Server {
    /// Serves on a thread of its own, with its own runtime and no signal handlers,
    /// until [`RunningServer::stop`] (or drop): for hosts that embed the server, and
    /// for tests.
    pub fn spawn(self) -> Result<RunningServer, ServerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("plugbay-serve")
            .build()
            .map_err(ServerError::Runtime)?;
        let addr = self.local_addr;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("plugbay-serve".to_owned())
            .spawn(move || {
                let served = runtime.block_on(self.run_until(async {
                    let _ = stopped.await;
                }));
                runtime.shutdown_timeout(LEFTOVER_WAIT);
                served
            })
            .map_err(ServerError::Runtime)?;
        Ok(RunningServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// A server serving on its own thread (from [`Server::spawn`]).
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServerError>>>,
}

impl RunningServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts the server down gracefully (requests in flight finish, plugin instances
    /// are drained and cleaned up) and waits for it.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ServerError::Serve(std::io::Error::other(
                "the server thread panicked",
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Err(err) = self.shut_down() {
            tracing::warn!(error = %err, "the server stopped with an error");
        }
    }
}

/// How long a server that has stopped waits for work its clients no longer wait for:
/// a request past its deadline was answered 503 but may still run on the blocking
/// pool (a plugin start, or a registration's inspection). Instances are stopped
/// before this, and none starts after (see `Instances::stop_all`). Past this, the
/// server stops without that work, rather than keep its caller waiting.
const LEFTOVER_WAIT: Duration = Duration::from_secs(10);

/// Binds and serves until SIGINT or SIGTERM (what `plugbay serve` does).
pub fn serve(options: ServeOptions) -> Result<(), ServerError> {
    Server::bind(options)?.run_blocking()
}

/// `requested`, or half the process's descriptor limit if that is lower (and at
/// least 1): the rest stay for the registry, libraries and worker processes.
fn connection_limit(requested: usize) -> usize {
    #[cfg(target_os = "linux")]
    {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        if let Some(soft) = soft.and_then(|soft| usize::try_from(soft).ok()) {
            let allowed = (soft / 2).max(1);
            if allowed < requested {
                tracing::warn!(
                    requested,
                    allowed,
                    descriptor_limit = soft,
                    "connection limit lowered to half the descriptor limit; raise the limit (`ulimit -n`) to serve more connections"
                );
                return allowed;
            }
        }
    }
    requested.max(1)
}

/// The OpenAPI 3.1 document of the API (what `GET /openapi.json` returns).
pub fn openapi() -> serde_json::Value {
    openapi::document()
}

/// A future that completes on SIGINT or SIGTERM. The handlers are installed now, so
/// a signal that arrives before the future is first polled is not lost.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, ServerError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("interrupt received; shutting down");
        })
    }
}

fn handler(operation: Operation, filter: MethodFilter) -> MethodRouter<Arc<App>> {
    match operation {
        Operation::Health => on(filter, handlers::health),
        Operation::OpenApi => on(filter, handlers::openapi),
        Operation::ListPlugins => on(filter, handlers::list_plugins),
        Operation::GetPlugin => on(filter, handlers::get_plugin),
        Operation::RegisterPlugin => on(filter, handlers::register_plugin),
        Operation::PutPlugin => on(filter, handlers::put_plugin),
        Operation::EnablePlugin => on(filter, handlers::enable_plugin),
        Operation::DisablePlugin => on(filter, handlers::disable_plugin),
        Operation::UnregisterPlugin => on(filter, handlers::unregister_plugin),
        Operation::ReviewPlugin => on(filter, handlers::review_plugin),
        Operation::ProcessBatch => on(filter, handlers::process_batch),
        Operation::UpgradePlugin => on(filter, handlers::upgrade_plugin),
        #[cfg(feature = "market")]
        Operation::InstallPlugin => on(filter, market::install_plugin),
        #[cfg(feature = "market")]
        Operation::PublishPlugin => on(filter, market::publish_plugin),
    }
}

fn method_filter(method: &str) -> MethodFilter {
    match method {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PUT" => MethodFilter::PUT,
        "DELETE" => MethodFilter::DELETE,
        other => unreachable!("the route table has no {other} route"),
    }
}

/// The router, from the route table.
fn router(app: Arc<App>) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        let mut method_router = handler(route.operation, method_filter(route.method));
        if route.access != Access::Public {
            method_router = method_router.route_layer(axum::middleware::from_fn_with_state(
                (app.clone(), route.access),
                middleware::authorize,
            ));
        }
        router = router.route(route.path, method_router);
    }
    router
        .fallback(handlers::route_not_found)
        .layer(DefaultBodyLimit::max(app.body_limit))
        .layer(RequestBodyLimitLayer::new(app.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            middleware::refuse_long_bodies,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            middleware::deadline,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            middleware::json_errors,
        ))
        .with_state(app)
}
