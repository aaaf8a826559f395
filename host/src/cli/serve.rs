//! `plugbay serve`

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use plugbay_host::server::{
    ServeOptions, Server, DEFAULT_ADDR, DEFAULT_BODY_LIMIT, DEFAULT_MAX_CONNECTIONS,
};

use super::Context;

/// Serve the registry over HTTP.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay keys create --name ops --scope plugins:read --scope plugins:write
  plugbay serve
  plugbay serve --addr 127.0.0.1:8080 --request-timeout 30s
  curl -H \"Authorization: Bearer $KEY\" http://127.0.0.1:7070/plugins

Every route but /health needs `Authorization: Bearer KEY`; /openapi.json describes
them. A connection that sends no request for the idle timeout is closed, a request
head that takes longer than the header timeout gets 408, and connections past the
limit get 503. SIGINT or SIGTERM stops the server: connections answering no request
close at once, the requests in flight finish, and the running plugins are cleaned
up.")]
pub struct Args {
    /// The address to listen on (loopback by default)
    #[arg(long, default_value_t = DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// The largest request body, in bytes
    #[arg(long, default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// The longest a request may take, e.g. `60s`, `2m` (the server's default: 60s)
    #[arg(long, value_parser = positive_duration, default_value = "60s")]
    pub request_timeout: Duration,
    /// How long a connection may wait for a request's first byte, new or between
    /// requests, before it is closed
    #[arg(long, value_parser = positive_duration, default_value = "30s")]
    pub idle_timeout: Duration,
    /// How long a request head may take from its first byte to its end (else 408)
    #[arg(long, value_parser = positive_duration, default_value = "10s")]
    pub header_timeout: Duration,
    /// Connections served at once; more get 503 (at most half the descriptor limit)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
}

/// A duration such as `30s` or `2m`, not zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => {
            Err("must be longer than zero, e.g. `30s`".to_owned())
        }
        Ok(duration) => Ok(duration),
        Err(err) => Err(format!("{err}; write it like `30s` or `2m`")),
    }
}

/// Serves until SIGINT or SIGTERM.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    let home = context.home()?;
    // A server on a home with no registry has no API key either: nobody could use
    // it, and a mistyped `--home` would leave a new registry behind.
    match plugbay_host::registry::Registry::open_existing(&home) {
        Ok(registry) => drop(registry),
        Err(plugbay_host::registry::RegistryError::NoRegistry { .. }) => anyhow::bail!(
            "no registry to serve in {} (it has no registry.db); create an API key with `plugbay keys create --name NAME --scope SCOPE`, which creates the registry, or give another home with `--home DIR`",
            home.display()
        ),
        Err(err) => {
            return Err(anyhow::Error::new(err)
                .context(format!("cannot serve the registry in {}", home.display())))
        }
    }
    let mut options = ServeOptions::new(&home);
    options.addr = args.addr;
    options.body_limit = args.body_limit;
    options.request_timeout = args.request_timeout;
    options.idle_timeout = args.idle_timeout;
    options.header_timeout = args.header_timeout;
    options.max_connections = args.max_connections;
    options.allow_unconfined = context.sandbox == plugbay_host::SandboxMode::AllowDegraded;
    let server = Server::bind(options)
        .with_context(|| format!("cannot serve the registry in {}", home.display()))?;
    let url = format!("http://{}", server.local_addr());
    if context.json {
        // One line, flushed, so a script can read the address before the server stops.
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "{}",
            serde_json::json!({ "listening": url, "home": home })
        )?;
        stdout.flush()?;
    } else {
        writeln!(
            std::io::stderr(),
            "plugbay serving {} on {url} (stop with Ctrl-C)",
            home.display()
        )?;
    }
    server.run_blocking()?;
    Ok(())
}
