//! The REST API (`plugbay serve`): a real server on loopback, driven by a real HTTP
//! client, on a real registry, with real plugins confined by real landlock.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use plugbay_host::registry::{Registry, Scope};
use plugbay_host::server::{RestartPolicy, RunningServer, ServeOptions, Server, ServerError};
use plugbay_tests::{example_manifest, fixture_manifest, library};
use reqwest::blocking::Client;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

mod upgrade;

// ---------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------

/// Everything the server logged in this process (plugbay, tower-http and axum, at
/// every level), to prove what it logs and what it never does.
pub(crate) fn logs() -> String {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buffer = LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
            .with_writer(move || Capture(writer.clone()))
            .try_init();
        assert!(
            subscriber.is_ok(),
            "the API tests own the global subscriber"
        );
        buffer
    });
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One key per scope, one with every scope, and a revoked one.
struct Keys {
    read: String,
    write: String,
    review: String,
    execute: String,
    install: String,
    publish: String,
    all: String,
    revoked: String,
}

impl Keys {
    fn create(home: &Path) -> Keys {
        let mut registry = Registry::open(home).unwrap();
        let mut key =
            |name: &str, scopes: &[Scope]| registry.create_key(name, scopes, "test").unwrap().1;
        let keys = Keys {
            read: key("reader", &[Scope::Read]),
            write: key("writer", &[Scope::Write]),
            review: key("reviewer", &[Scope::Review]),
            execute: key("runner", &[Scope::Execute]),
            install: key("installer", &[Scope::Install]),
            publish: key("publisher", &[Scope::Publish]),
            all: key(
                "admin",
                &[
                    Scope::Read,
                    Scope::Write,
                    Scope::Review,
                    Scope::Execute,
                    Scope::Install,
                    Scope::Publish,
                ],
            ),
            revoked: key(
                "former",
                &[Scope::Read, Scope::Write, Scope::Review, Scope::Execute],
            ),
        };
        registry.revoke_key("former", "test").unwrap();
        keys
    }

    fn single_scoped(&self) -> [(&'static str, &str); 6] {
        [
            ("plugins:read", &self.read),
            ("plugins:write", &self.write),
            ("plugins:review", &self.review),
            ("plugins:execute", &self.execute),
            ("plugins:install", &self.install),
            ("plugins:publish", &self.publish),
        ]
    }
}

/// A server on 127.0.0.1:0 with a fresh registry, keys for every scope, and a client.
struct Api {
    server: Option<RunningServer>,
    base: String,
    home: PathBuf,
    dir: tempfile::TempDir,
    keys: Keys,
    client: Client,
}

fn options(home: &Path) -> ServeOptions {
    let mut options = ServeOptions::new(home);
    options.addr = "127.0.0.1:0".parse().unwrap();
    // Plugins approved for process isolation run in worker processes of the
    // `plugbay` binary (this test binary cannot serve as one).
    options.worker_program = Some(plugbay_tests::plugbay_bin().to_owned());
    options
}

impl Api {
    fn start() -> Api {
        Api::start_with(|_| {})
    }

    fn start_with(tweak: impl FnOnce(&mut ServeOptions)) -> Api {
        plugbay_tests::watchdog(crate::HUNG_AFTER);
        logs();
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let keys = Keys::create(&home);
        let mut options = options(&home);
        tweak(&mut options);
        let server = Server::bind(options).unwrap().spawn().unwrap();
        Api {
            base: format!("http://{}", server.local_addr()),
            server: Some(server),
            home,
            dir,
            keys,
            client: client(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().local_addr()
    }

    fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> Reply {
        call(
            &self.client,
            &self.base,
            method,
            path,
            key,
            body.map(|b| b.to_string().into_bytes()),
        )
    }

    fn raw(&self, method: Method, path: &str, key: Option<&str>, body: Vec<u8>) -> Reply {
        call(&self.client, &self.base, method, path, key, Some(body))
    }

    fn registry(&self) -> Registry {
        Registry::open(&self.home).unwrap()
    }

    /// Registers, approves and enables a built plugin through the API; returns its id.
    fn ready(&self, package: &str) -> String {
        let reply = self.call(
            Method::POST,
            "/plugins/register",
            Some(&self.keys.write),
            Some(seed_body(package)),
        );
        assert_eq!(reply.status, 201, "{reply:?}");
        let id = reply.body["id"].as_str().unwrap().to_owned();
        let reply = self.call(
            Method::POST,
            &format!("/plugins/{id}/review"),
            Some(&self.keys.review),
            Some(json!({"decision": "approve"})),
        );
        assert_eq!(reply.status, 200, "{reply:?}");
        let reply = self.call(
            Method::PUT,
            &format!("/plugins/{id}/enable"),
            Some(&self.keys.write),
            None,
        );
        assert_eq!(reply.status, 200, "{reply:?}");
        id
    }

    fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            stop_within(server, STOP_WAIT).unwrap();
        }
    }
}

/// How long a test waits for its server to stop: the shutdown grace (the request
/// timeout and 5 s), the plugins' cleanup and stop deadlines, and then some.
const STOP_WAIT: Duration = Duration::from_secs(180);

/// Stops `server`, failing the test with the state of every thread of this process
/// if it takes longer than `wait`, instead of hanging the suite.
fn stop_within(server: RunningServer, wait: Duration) -> Result<(), ServerError> {
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(server.stop());
    });
    match stopped.recv_timeout(wait) {
        Ok(result) => result,
        Err(_) => panic!(
            "the server did not stop within {wait:?}; the threads of this process:\n{}",
            plugbay_tests::thread_states()
        ),
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            // A test that failed already has its own message.
            if std::thread::panicking() {
                let _ = server.stop();
            } else {
                let _ = stop_within(server, STOP_WAIT);
            }
        }
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }

    fn field(&self) -> &str {
        self.body["error"]["field"].as_str().unwrap_or("")
    }

    /// An error answered as the API promises: JSON, `{"error": {"code", "message"}}`.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.header("content-type").starts_with("application/json"),
            "{self:?}"
        );
        assert_eq!(self.code(), code, "{self:?}");
        assert!(!self.message().is_empty(), "{self:?}");
    }
}

fn call(
    client: &Client,
    base: &str,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
) -> Reply {
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        text,
        body,
    }
}

/// The seed's registration body for a plugin built by the tests.
fn seed_body(package: &str) -> Value {
    let entry_point = library(package).display().to_string();
    if package == "fixture-raw-output" {
        return json!({
            "name": "raw-output", "version": "0.1.0", "description": "returns invalid JSON",
            "entry_point": entry_point, "permissions": ["process:data"],
        });
    }
    let manifest_path = match package.strip_prefix("fixture-") {
        Some(name) => fixture_manifest(name),
        None => example_manifest(package),
    };
    let manifest = plugbay_host::read_manifest(&manifest_path).unwrap();
    json!({
        "name": manifest.name,
        "version": manifest.version.to_string(),
        "description": manifest.description,
        "entry_point": entry_point,
        "permissions": manifest.permissions.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// A copy of an example plugin (manifest, library, extra files) in its own folder.
fn plugin_copy(dir: &Path, name: &str) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    for entry in std::fs::read_dir(example_manifest(name).parent().unwrap()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "json") {
            std::fs::copy(&path, folder.join(path.file_name().unwrap())).unwrap();
        }
    }
    let lib = library(name);
    std::fs::copy(&lib, folder.join(lib.file_name().unwrap())).unwrap();
    folder.join(lib.file_name().unwrap())
}

/// A request written by hand on a raw connection (for what a client library will
/// not send); returns the status and the body.
fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may answer (and close) before the whole request is written.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, head.to_owned(), json)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Checks `value` against a schema of the OpenAPI document (the subset of JSON
/// Schema the document uses: `$ref`, `type`, `enum`, `required`, `properties`,
/// `additionalProperties: false`, `items`, `minimum`).
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
        let name = target.strip_prefix("#/components/schemas/").unwrap();
        return validate(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(kind) = schema.get("type") {
        let kinds: Vec<&str> = match kind {
            Value::String(kind) => vec![kind.as_str()],
            Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !kinds
            .iter()
            .any(|kind| *kind == actual || (*kind == "number" && actual == "integer"))
        {
            return Err(format!(
                "{at}: expected {kinds:?}, found {actual} ({value})"
            ));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(minimum), Some(number)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) {
        if number < minimum {
            return Err(format!("{at}: {number} < {minimum}"));
        }
    }
    if let Value::Object(object) = value {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                return Err(format!("{at}: missing required `{name}`"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, item) in object {
            match properties.and_then(|properties| properties.get(name)) {
                Some(property) => validate(doc, property, item, &format!("{at}.{name}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: undocumented property `{name}`"))
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (index, item) in items.iter().enumerate() {
            validate(doc, item_schema, item, &format!("{at}[{index}]"))?;
        }
    }
    Ok(())
}

/// The documented `(method, path)` pairs and, for each, its responses.
fn documented(doc: &Value) -> BTreeMap<(String, String), BTreeMap<String, Value>> {
    let mut routes = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap().clone();
            routes.insert(
                (method.to_uppercase(), path.clone()),
                responses.into_iter().collect(),
            );
        }
    }
    routes
}

/// A documented path with `{id}` filled in.
fn concrete(path: &str, id: &str) -> String {
    path.replace("{id}", id)
}

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap()
}

fn configure(api: &Api, id: &str, config: Value) {
    api.registry().configure(id, &config, "test").unwrap();
}

// ---------------------------------------------------------------------------------
// The seed's example and the lifecycle
// ---------------------------------------------------------------------------------

/// The seed's manifest writes `hooks` as an object of handler names: a `plugin.json`
/// so written beside the library registers (the names are informational), and the
/// entry lists the hooks.
#[test]
fn a_plugin_json_with_the_seeds_hooks_object_registers() {
    let api = Api::start();
    let library = plugin_copy(api.dir.path(), "data-processor");
    let manifest = library.with_file_name("plugin.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let seed = text.replace(
        r#""hooks": ["init", "process", "cleanup"]"#,
        r#""hooks": {"init": "onInit", "process": "onProcess", "cleanup": "onCleanup"}"#,
    );
    assert_ne!(seed, text);
    std::fs::write(&manifest, seed).unwrap();
    let mut body = seed_body("data-processor");
    body["entry_point"] = json!(library.display().to_string());
    let reply = api.call(
        Method::POST,
        "/plugins/register",
        Some(&api.keys.write),
        Some(body),
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(
        reply.body["plugin_dir"],
        library.parent().unwrap().display().to_string(),
        "the plugin.json beside the library is the manifest"
    );
    assert_eq!(
        reply.body["manifest"]["hooks"],
        json!(["init", "process", "cleanup"])
    );
}

/// What plugins run by the server write with `store_put` stays in the home's
/// `store.db` after the server stops, where `plugbay run` and `plugbay store` see it.
#[test]
fn the_servers_data_store_outlasts_it() {
    let mut api = Api::start();
    let id = api.ready("dedup");
    let reply = api.call(
        Method::POST,
        &format!("/plugins/{id}/process"),
        Some(&api.keys.execute),
        Some(json!([{"id": 1}, {"id": 1}])),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    api.stop();
    use plugbay_host::DataStore;
    let store = plugbay_host::registry::SqliteStore::open(&api.home).unwrap();
    let stats: Value = serde_json::from_slice(
        &store
            .get("dedup/stats")
            .unwrap()
            .expect("written at cleanup"),
    )
    .unwrap();
    assert_eq!(stats, json!({"distinct": 1, "dropped": 1, "kept": 1}));
    assert!(api.home.join("store.db").is_file());
}

/// The seed's paths name a plugin by its bare name (`/plugins/data-processor`): it
/// resolves to the one registered version, else to the one enabled; with several and
/// not exactly one enabled, the answer is 409 `ambiguous_name`, listing them.
#[test]
fn a_bare_name_resolves_to_its_one_version_or_its_enabled_one() {
    let api = Api::start();
    let keys = &api.keys;
    let dp = api.ready("data-processor");
    let reply = api.call(
        Method::GET,
        "/plugins/data-processor",
        Some(&keys.read),
        None,
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["id"], dp.as_str());
    let reply = api.call(
        Method::POST,
        "/plugins/data-processor/process",
        Some(&keys.execute),
        Some(json!([{"id": 1}])),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body[0]["processed"], true);

    // Two versions of `noop`, neither enabled: ambiguous for every route.
    for package in ["fixture-noop", "fixture-noop-next"] {
        let reply = api.call(
            Method::POST,
            "/plugins/register",
            Some(&keys.write),
            Some(seed_body(package)),
        );
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    for (method, path, key, body) in [
        (Method::GET, "/plugins/noop", &keys.read, None),
        (Method::PUT, "/plugins/noop/enable", &keys.write, None),
        (Method::PUT, "/plugins/noop/disable", &keys.write, None),
        (Method::DELETE, "/plugins/noop", &keys.write, None),
        (
            Method::POST,
            "/plugins/noop/review",
            &keys.review,
            Some(json!({"decision": "approve"})),
        ),
        (
            Method::POST,
            "/plugins/noop/process",
            &keys.execute,
            Some(json!([])),
        ),
    ] {
        let reply = api.call(method.clone(), path, Some(key), body);
        reply.assert_error(409, "ambiguous_name");
        assert_eq!(
            reply.message(),
            "plugin name `noop` is ambiguous: 2 versions are registered (noop@0.1.0, noop@0.2.0) and none is enabled; give the id (`name@version`) of the one you mean",
            "{method} {path}"
        );
    }

    // With one of them enabled, the name means that one.
    for (method, path, key, body) in [
        (
            Method::POST,
            "/plugins/noop@0.2.0/review",
            &keys.review,
            Some(json!({"decision": "approve"})),
        ),
        (Method::PUT, "/plugins/noop@0.2.0/enable", &keys.write, None),
    ] {
        assert_eq!(api.call(method, path, Some(key), body).status, 200);
    }
    let reply = api.call(
        Method::POST,
        "/plugins/noop/process",
        Some(&keys.execute),
        Some(json!([{"id": 1}])),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, json!([{"id": 1, "version": "0.2.0"}]));
    let reply = api.call(
        Method::PUT,
        "/plugins/noop/disable",
        Some(&keys.write),
        None,
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["id"], "noop@0.2.0");
    api.call(Method::GET, "/plugins/noop", Some(&keys.read), None)
        .assert_error(409, "ambiguous_name");
    let reply = api.call(
        Method::DELETE,
        "/plugins/noop@0.1.0",
        Some(&keys.write),
        None,
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = api.call(Method::GET, "/plugins/noop", Some(&keys.read), None);
    assert_eq!(reply.body["id"], "noop@0.2.0", "the one version left");
}

#[test]
fn a_rebuild_put_at_its_id_becomes_its_next_revision_pending_review() {
    let api = Api::start();
    let keys = &api.keys;
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libdata_processor.so");
    std::fs::copy(library("data-processor"), &lib).unwrap();
    let mut body = seed_body("data-processor");
    body["entry_point"] = json!(lib.display().to_string());
    let id = "data-processor@1.0.0";
    let put = |path: &str, key: &str, body: &Value| {
        api.call(Method::PUT, path, Some(key), Some(body.clone()))
    };
    let path = format!("/plugins/{id}");

    // Not registered yet: registered, as by POST /plugins/register.
    let reply = put(&path, &keys.write, &body);
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("location"), path);
    assert_eq!(
        (
            reply.body["revision"].as_u64(),
            &reply.body["review"]["status"]
        ),
        (Some(1), &json!("pending"))
    );
    let first_sha = reply.body["sha256"].as_str().unwrap().to_owned();
    let reply = api.call(
        Method::POST,
        &format!("{path}/review"),
        Some(&keys.review),
        Some(json!({"decision": "approve"})),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = api.call(
        Method::PUT,
        &format!("{path}/enable"),
        Some(&keys.write),
        None,
    );
    assert_eq!(reply.status, 200, "{reply:?}");

    // The same library again changes nothing: still revision 1, approved, enabled.
    let reply = put(&path, &keys.write, &body);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["revision"], 1);
    assert_eq!(reply.body["review"]["status"], "approved");
    assert_eq!(reply.body["enabled"], true);

    // POST of a registered id points to PUT.
    let taken = api.call(
        Method::POST,
        "/plugins/register",
        Some(&keys.write),
        Some(body.clone()),
    );
    taken.assert_error(409, "already_registered");
    assert!(
        taken.message().contains(&format!("PUT /plugins/{id}")),
        "{taken:?}"
    );

    // A rebuild (other bytes): the next revision, pending review and disabled.
    let mut bytes = std::fs::read(&lib).unwrap();
    bytes.extend_from_slice(b"a rebuild");
    std::fs::write(&lib, bytes).unwrap();
    let reply = put(&path, &keys.write, &body);
    assert_eq!(reply.status, 200, "{reply:?}");
    let entry = &reply.body;
    assert_eq!(entry["revision"], 2);
    assert_ne!(entry["sha256"], first_sha.as_str());
    assert_eq!(entry["review"]["status"], "pending");
    assert_eq!(entry["enabled"], false);
    assert_eq!(entry["previous"]["revision"], 1);
    assert_eq!(entry["previous"]["sha256"], first_sha.as_str());
    assert_eq!(entry["previous"]["review"]["status"], "approved");
    api.call(
        Method::POST,
        &format!("{path}/process"),
        Some(&keys.execute),
        Some(json!([{"a": 1}])),
    )
    .assert_error(409, "not_approved");
    let reply = api.call(Method::GET, &path, Some(&keys.read), None);
    assert_eq!(reply.body["revision"], 2, "{reply:?}");

    // Bad requests, each named.
    let reply = put("/plugins/data-processor@2.0.0", &keys.write, &body);
    reply.assert_error(400, "invalid_body");
    assert_eq!(reply.field(), "version", "{reply:?}");
    let reply = put("/plugins/redactor@1.0.0", &keys.write, &body);
    assert_eq!(reply.field(), "name", "{reply:?}");
    let reply = put("/plugins/data-processor", &keys.write, &body);
    reply.assert_error(400, "invalid_id");
    assert!(
        reply.message().contains(&format!("/plugins/{id}")),
        "{reply:?}"
    );
    let mut remote = body.clone();
    remote["entry_point"] = json!("https://example.com/libdata_processor.so");
    let reply = put(&path, &keys.write, &remote);
    reply.assert_error(400, "invalid_body");
    assert_eq!(reply.field(), "entry_point", "{reply:?}");
    put(&path, &keys.read, &body).assert_error(403, "forbidden");
}

#[test]
fn the_seeds_registration_request_is_answered_as_documented() {
    let api = Api::start();
    let entry_point = library("data-processor").display().to_string();
    // The seed's example request, with a local entry point.
    let reply = api.call(
        Method::POST,
        "/plugins/register",
        Some(&api.keys.write),
        Some(json!({
            "name": "data-processor",
            "version": "1.0.0",
            "description": "A plugin for processing data",
            "entry_point": entry_point,
            "permissions": ["process:data"],
        })),
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("location"), "/plugins/data-processor@1.0.0");
    let entry = &reply.body;
    assert_eq!(entry["id"], "data-processor@1.0.0");
    assert_eq!(
        entry["manifest"]["description"],
        "A plugin for processing data"
    );
    assert_eq!(entry["manifest"]["permissions"], json!(["process:data"]));
    assert_eq!(entry["source"], entry_point.as_str());
    let stored = entry["library"].as_str().unwrap();
    assert!(
        stored.ends_with(&format!(
            "/libraries/{}/libdata_processor.so",
            entry["sha256"].as_str().unwrap()
        )),
        "the library is copied into the store: {stored}"
    );
    assert_eq!(entry["review"]["status"], "pending");
    assert_eq!(entry["enabled"], false);
    assert_eq!(entry["sha256"].as_str().unwrap().len(), 64);

    // The same through a file:// URL.
    let mut body = seed_body("redactor");
    body["entry_point"] = json!(format!("file://{}", library("redactor").display()));
    let reply = api.call(
        Method::POST,
        "/plugins/register",
        Some(&api.keys.write),
        Some(body),
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(
        reply.body["source"],
        library("redactor").display().to_string()
    );

    let id = "data-processor@1.0.0";
    let early = api.call(
        Method::POST,
        &format!("/plugins/{id}/process"),
        Some(&api.keys.execute),
        Some(json!([{"a": 1}])),
    );
    early.assert_error(409, "not_approved");
    let early = api.call(
        Method::PUT,
        &format!("/plugins/{id}/enable"),
        Some(&api.keys.write),
        None,
    );
    early.assert_error(409, "not_approved");
    assert!(
        early
            .message()
            .contains("POST /plugins/data-processor@1.0.0/review"),
        "{early:?}"
    );

    let approved = api.call(
        Method::POST,
        &format!("/plugins/{id}/review"),
        Some(&api.keys.review),
        Some(json!({"decision": "approve", "permissions": ["process:data"]})),
    );
    assert_eq!(approved.status, 200, "{approved:?}");
    assert_eq!(approved.body["review"]["status"], "approved");
    assert_eq!(
        approved.body["review"]["reviewer"],
        format!("reviewer (api key {})", &api.keys.review[3..19])
    );
    assert_eq!(approved.body["review"]["granted"], json!(["process:data"]));

    let disabled = api.call(
        Method::POST,
        &format!("/plugins/{id}/process"),
        Some(&api.keys.execute),
        Some(json!([{"a": 1}])),
    );
    disabled.assert_error(409, "disabled");

    let enabled = api.call(
        Method::PUT,
        &format!("/plugins/{id}/enable"),
        Some(&api.keys.write),
        None,
    );
    assert_eq!(enabled.status, 200, "{enabled:?}");
    assert_eq!(enabled.body["enabled"], true);

    let processed = api.call(
        Method::POST,
        &format!("/plugins/{id}/process"),
        Some(&api.keys.execute),
        Some(json!([{"id": 1}, {"id": 2}])),
    );
    assert_eq!(processed.status, 200, "{processed:?}");
    assert!(processed
        .header("content-type")
        .starts_with("application/json"));
    let records = processed.body.as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["id"], 1);
    assert_eq!(records[0]["processed"], true);
    assert!(records[1]["timestamp"].is_string());

    let listed = api.call(Method::GET, "/plugins", Some(&api.keys.read), None);
    assert_eq!(listed.status, 200);
    let ids: Vec<&str> = listed.body["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["data-processor@1.0.0", "redactor@1.0.0"]);
    let shown = api.call(
        Method::GET,
        &format!("/plugins/{id}"),
        Some(&api.keys.read),
        None,
    );
    assert_eq!(shown.status, 200);
    assert_eq!(shown.body["enabled"], true);

    let health = api.call(Method::GET, "/health", None, None);
    assert_eq!(health.body["instances"], 1, "{health:?}");

    let disabled = api.call(
        Method::PUT,
        &format!("/plugins/{id}/disable"),
        Some(&api.keys.write),
        None,
    );
    assert_eq!(disabled.status, 200);
    assert_eq!(disabled.body["enabled"], false);
    let health = api.call(Method::GET, "/health", None, None);
    assert_eq!(
        health.body["instances"], 0,
        "disable stops the instance: {health:?}"
    );
    api.call(
        Method::POST,
        &format!("/plugins/{id}/process"),
        Some(&api.keys.execute),
        Some(json!([])),
    )
    .assert_error(409, "disabled");

    let gone = api.call(
        Method::DELETE,
        &format!("/plugins/{id}"),
        Some(&api.keys.write),
        None,
    );
    assert_eq!(gone.status, 200);
    assert_eq!(gone.body["id"], id);
    api.call(
        Method::GET,
        &format!("/plugins/{id}"),
        Some(&api.keys.read),
        None,
    )
    .assert_error(404, "not_found");

    let actions: Vec<String> = api
        .registry()
        .audit_log(Some(id))
        .unwrap()
        .into_iter()
        .map(|event| {
            format!(
                "{} {}",
                event.actor.split(' ').next().unwrap(),
                event.action
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            "writer register",
            "reviewer approve",
            "writer enable",
            "writer disable",
            "writer unregister"
        ]
    );
}

#[test]
fn a_plugin_json_beside_the_library_is_its_manifest_and_folder() {
    let api = Api::start();
    let library = plugin_copy(api.dir.path(), "enricher");
    let mut body = seed_body("enricher");
    body["entry_point"] = json!(library.display().to_string());
    let reply = api.call(
        Method::POST,
        "/plugins/register",
        Some(&api.keys.write),
        Some(body),
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(
        reply.body["plugin_dir"],
        library.parent().unwrap().display().to_string()
    );
    let id = "enricher@1.0.0";
    api.call(
        Method::POST,
        &format!("/plugins/{id}/review"),
        Some(&api.keys.review),
        Some(json!({"decision": "approve"})),
    );
    api.call(
        Method::PUT,
        &format!("/plugins/{id}/enable"),
        Some(&api.keys.write),
        None,
    );
    // The plugin reads lookup.json from its folder, under landlock.
    let lookup: Value = serde_json::from_str(
        &std::fs::read_to_string(library.parent().unwrap().join("lookup.json")).unwrap(),
    )
    .unwrap();
    let country = lookup.as_object().unwrap().keys().next().unwrap().clone();
    let reply = api.call(
        Method::POST,
        &format!("/plugins/{id}/process"),
        Some(&api.keys.execute),
        Some(json!([{"country": country}])),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body[0].as_object().unwrap().len() > 1, "{reply:?}");
}

#[test]
fn instances_are_reused_restarted_after_failure_and_run_the_reviewed_library() {
    let api = Api::start();
    let process = |id: &str, body: Value| {
        api.call(
            Method::POST,
            &format!("/plugins/{id}/process"),
            Some(&api.keys.execute),
            Some(body),
        )
    };
    // dedup remembers across batches: the second batch meets the same instance.
    let dedup = api.ready("dedup");
    assert_eq!(
        process(&dedup, json!([{"id": 1}, {"id": 2}])).body,
        json!([{"id": 1}, {"id": 2}])
    );
    assert_eq!(
        process(&dedup, json!([{"id": 2}, {"id": 3}])).body,
        json!([{"id": 3}])
    );
    // New config: a fresh instance, with an empty memory.
    configure(&api, &dedup, json!({"key": "id"}));
    assert_eq!(
        process(&dedup, json!([{"id": 2, "x": 1}])).body,
        json!([{"id": 2, "x": 1}])
    );

    // A panic fails the instance; the next batch gets a fresh one, which panics anew
    // (rather than being refused as failed earlier).
    let faulty = api.ready("fixture-faulty");
    configure(&api, &faulty, json!({"panic": "process"}));
    for _ in 0..2 {
        let reply = process(&faulty, json!([1]));
        reply.assert_error(500, "plugin_panicked");
        assert!(
            reply.message().contains("deliberate panic in process"),
            "{reply:?}"
        );
    }
    configure(&api, &faulty, json!({}));
    assert_eq!(process(&faulty, json!([1, 2])).body, json!([1, 2]));

    // A plugin whose library is rebuilt and tampered with while an instance runs.
    let library = plugin_copy(api.dir.path(), "redactor");
    let mut body = seed_body("redactor");
    body["entry_point"] = json!(library.display().to_string());
    let reply = api.call(
        Method::POST,
        "/plugins/register",
        Some(&api.keys.write),
        Some(body),
    );
    let redactor = reply.body["id"].as_str().unwrap().to_owned();
    api.call(
        Method::POST,
        &format!("/plugins/{redactor}/review"),
        Some(&api.keys.review),
        Some(json!({"decision": "approve"})),
    );
    api.call(
        Method::PUT,
        &format!("/plugins/{redactor}/enable"),
        Some(&api.keys.write),
        None,
    );
    let redacted = process(&redactor, json!([{"a": "x@y.io"}]));
    assert_eq!(redacted.status, 200);
    // The file it was registered from is rebuilt: the reviewed copy in the store runs.
    let next = library.with_extension("so.new");
    std::fs::copy(plugbay_tests::library("dedup"), &next).unwrap();
    std::fs::rename(&next, &library).unwrap();
    assert_eq!(
        process(&redactor, json!([{"a": "x@y.io"}])).body,
        redacted.body
    );
    // The stored copy is tampered with: instances still run the reviewed bytes, and
    // the plugin cannot be enabled again.
    let entry = api.call(
        Method::GET,
        &format!("/plugins/{redactor}"),
        Some(&api.keys.read),
        None,
    );
    let stored = std::path::PathBuf::from(entry.body["library"].as_str().unwrap());
    assert_ne!(stored, library);
    make_writable(&stored);
    std::fs::copy(plugbay_tests::library("dedup"), &stored).unwrap();
    assert_eq!(
        process(&redactor, json!([{"a": "x@y.io"}])).body,
        redacted.body
    );
    api.call(
        Method::PUT,
        &format!("/plugins/{redactor}/disable"),
        Some(&api.keys.write),
        None,
    );
    let reply = api.call(
        Method::PUT,
        &format!("/plugins/{redactor}/enable"),
        Some(&api.keys.write),
        None,
    );
    reply.assert_error(409, "library_changed");
    assert!(
        reply.message().contains("changed since review"),
        "{reply:?}"
    );
}

/// Makes a stored library and its folder writable again (the store keeps them
/// read-only), as an attacker with the home's owner's rights could.
fn make_writable(stored: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let folder = stored.parent().unwrap();
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(stored, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn failed_instances_restart_with_a_growing_delay_and_stuck_workers_are_capped() {
    let api = Api::start_with(|options| {
        options.restarts = RestartPolicy {
            immediate: 1,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            window: Duration::from_secs(600),
            max_abandoned: 2,
        };
    });
    let process = |id: &str| {
        api.call(
            Method::POST,
            &format!("/plugins/{id}/process"),
            Some(&api.keys.execute),
            Some(json!([1])),
        )
    };
    let runtime = |id: &str| {
        let reply = api.call(
            Method::GET,
            &format!("/plugins/{id}"),
            Some(&api.keys.read),
            None,
        );
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body["runtime"].clone()
    };
    let faulty = api.ready("fixture-faulty");
    // On worker threads of the server, whose hangs leave stuck threads behind (a
    // worker process would be killed at the deadline instead).
    let reply = api.call(
        Method::POST,
        &format!("/plugins/{faulty}/review"),
        Some(&api.keys.review),
        Some(json!({"decision": "approve", "isolation": "thread"})),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(runtime(&faulty)["restarts"], 0);
    configure(&api, &faulty, json!({"panic": "process"}));
    // The first failure is followed by a fresh instance at once...
    process(&faulty).assert_error(500, "plugin_panicked");
    process(&faulty).assert_error(500, "plugin_panicked");
    // ... the second delays the next one by 1 s.
    let refused = process(&faulty);
    refused.assert_error(503, "plugin_backoff");
    assert_eq!(refused.header("retry-after"), "1", "{refused:?}");
    assert!(
        refused.message().contains("failed 2 times within 10m")
            && refused.message().contains("no earlier than")
            && refused.message().contains("deliberate panic in process"),
        "{refused:?}"
    );
    let report = runtime(&faulty);
    assert_eq!(report["restarts"], 1, "{report}");
    assert_eq!(report["recent_failures"], 2, "{report}");
    assert_eq!(report["running"], false, "{report}");
    assert!(
        report["last_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("deliberate panic in process"),
        "{report}"
    );
    assert!(report["next_start_at"].is_string(), "{report}");
    std::thread::sleep(Duration::from_millis(1100));
    process(&faulty).assert_error(500, "plugin_panicked");
    // The third failure doubles the delay.
    let refused = process(&faulty);
    refused.assert_error(503, "plugin_backoff");
    assert_eq!(refused.header("retry-after"), "2", "{refused:?}");
    assert_eq!(runtime(&faulty)["restarts"], 2);

    // A new config forgets the failures. Hangs abandon their workers, which are
    // counted, and at the limit no instance starts at all.
    configure(&api, &faulty, json!({"hang": "process"}));
    process(&faulty).assert_error(504, "plugin_timeout");
    process(&faulty).assert_error(504, "plugin_timeout");
    std::thread::sleep(Duration::from_millis(1100));
    let refused = process(&faulty);
    refused.assert_error(503, "plugin_backoff");
    assert!(
        refused
            .message()
            .contains("has 2 worker threads stuck in plugin code"),
        "{refused:?}"
    );
    let report = runtime(&faulty);
    assert_eq!(report["abandoned_workers"], 2, "{report}");
    assert!(
        report["last_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("process did not return within 2s"),
        "{report}"
    );
    let health = api.call(Method::GET, "/health", None, None);
    assert_eq!(health.body["abandoned_workers"], 2, "{health:?}");
}

#[test]
fn registration_checks_the_body_against_the_plugin() {
    let api = Api::start();
    let register = |body: Value| {
        api.call(
            Method::POST,
            "/plugins/register",
            Some(&api.keys.write),
            Some(body),
        )
    };
    let refused = |body: Value, field: &str, needle: &str| {
        let reply = register(body);
        reply.assert_error(400, "invalid_body");
        assert_eq!(reply.field(), field, "{reply:?}");
        assert!(
            reply.message().contains(needle),
            "{needle:?} not in {reply:?}"
        );
    };
    let with = |field: &str, value: Value| {
        let mut body = seed_body("data-processor");
        body[field] = value;
        body
    };
    // https://, http:// and oci:// entry points are downloaded (see the market tests);
    // other remote schemes are not.
    for remote in [
        "ftp://plugins.example.com/libdata_processor.so",
        "file://build-host/opt/libdata_processor.so",
    ] {
        refused(
            with("entry_point", json!(remote)),
            "entry_point",
            "remote entry points are not supported",
        );
    }
    refused(
        with("entry_point", json!("libdata_processor.so")),
        "entry_point",
        "relative path",
    );
    refused(
        with("entry_point", json!("/nonexistent/libdata_processor.so")),
        "entry_point",
        "does not exist on the server's machine",
    );
    refused(
        with(
            "entry_point",
            json!(library("fixture-not-a-plugin").display().to_string()),
        ),
        "entry_point",
        "cannot be loaded",
    );
    refused(
        with(
            "entry_point",
            json!(library("redactor").display().to_string()),
        ),
        "name",
        "`redactor`",
    );
    refused(
        with("name", json!("data-processer")),
        "name",
        "does not match the plugin's manifest",
    );
    refused(with("version", json!("1.0.1")), "version", "does not match");
    refused(
        with("version", json!("one")),
        "version",
        "not a semantic version",
    );
    refused(
        with("permissions", json!(["process:data", "read:data"])),
        "permissions",
        "do not match what the plugin's manifest requests",
    );
    refused(
        with("permissions", json!(["process:dta"])),
        "permissions[0]",
        "unknown permission `process:dta`",
    );
    refused(
        with("permissions", json!(["process:data", 7])),
        "permissions[1]",
        "expected a string",
    );
    refused(
        with("description", json!("  ")),
        "description",
        "must not be empty",
    );
    refused(
        with("colour", json!("blue")),
        "colour",
        "unknown field `colour`",
    );
    let mut missing = seed_body("data-processor");
    missing.as_object_mut().unwrap().remove("entry_point");
    refused(missing, "entry_point", "missing field `entry_point`");

    let reply = api.raw(
        Method::POST,
        "/plugins/register",
        Some(&api.keys.write),
        b"{\"name\": ".to_vec(),
    );
    reply.assert_error(400, "invalid_body");
    assert!(reply.message().contains("not valid JSON"), "{reply:?}");
    let reply = api.raw(
        Method::POST,
        "/plugins/register",
        Some(&api.keys.write),
        Vec::new(),
    );
    reply.assert_error(400, "invalid_body");
    assert!(reply.message().contains("empty"), "{reply:?}");
    assert!(
        api.registry().list().unwrap().is_empty(),
        "nothing half-registered"
    );

    assert_eq!(register(seed_body("data-processor")).status, 201);
    let again = register(seed_body("data-processor"));
    again.assert_error(409, "already_registered");
    assert!(
        again.message().contains("data-processor@1.0.0"),
        "{again:?}"
    );
}

#[test]
fn reviews_grant_what_was_asked_and_rejections_need_a_reason() {
    let api = Api::start();
    let reply = api.call(
        Method::POST,
        "/plugins/register",
        Some(&api.keys.write),
        Some(seed_body("fixture-faulty")),
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    let review = |body: Value| {
        api.call(
            Method::POST,
            "/plugins/faulty@0.1.0/review",
            Some(&api.keys.review),
            Some(body),
        )
    };
    let reply = review(json!({"decision": "approve", "permissions": ["net:connect:80"]}));
    reply.assert_error(400, "invalid_body");
    assert_eq!(reply.field(), "permissions");
    assert!(reply.message().contains("does not request it"), "{reply:?}");
    let reply = review(json!({"decision": "approve", "reason": "fine"}));
    assert_eq!(reply.field(), "reason", "{reply:?}");
    let reply = review(json!({"decision": "reject"}));
    reply.assert_error(400, "invalid_body");
    assert_eq!(reply.field(), "reason", "{reply:?}");
    let reply = review(json!({"decision": "reject", "reason": "x", "permissions": []}));
    assert_eq!(reply.field(), "permissions", "{reply:?}");
    let reply = review(json!({"decision": "maybe"}));
    assert_eq!(reply.field(), "decision", "{reply:?}");
    assert!(reply.message().contains("approve"), "{reply:?}");

    // Granted without process:data, which its `process` hook needs: refused at review,
    // not discovered at the first batch.
    let reply = review(json!({"decision": "approve", "permissions": ["read:data"]}));
    reply.assert_error(400, "invalid_body");
    assert_eq!(reply.field(), "permissions", "{reply:?}");
    assert!(
        reply.message().contains(
            "cannot approve `faulty@0.1.0` without `process:data`: it declares the `process` hook"
        ),
        "{reply:?}"
    );
    assert_eq!(
        api.registry()
            .get("faulty@0.1.0")
            .unwrap()
            .review
            .status
            .to_string(),
        "pending"
    );

    let reply = review(json!({"decision": "reject", "reason": "asks for the data store"}));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["review"]["status"], "rejected");
    assert_eq!(reply.body["review"]["reason"], "asks for the data store");
    assert_eq!(reply.body["enabled"], false);
    api.call(
        Method::PUT,
        "/plugins/faulty@0.1.0/enable",
        Some(&api.keys.write),
        None,
    )
    .assert_error(409, "not_approved");
}

// ---------------------------------------------------------------------------------
// Keys and scopes
// ---------------------------------------------------------------------------------

#[test]
fn every_scope_is_allowed_where_it_belongs_and_refused_elsewhere() {
    let api = Api::start();
    let doc = api
        .call(Method::GET, "/openapi.json", Some(&api.keys.read), None)
        .body;
    let mut checked = 0;
    for ((method_name, path), _) in documented(&doc) {
        let security = &doc["paths"][&path][method_name.to_lowercase()]["security"];
        let needed: Option<&str> = security[0]["bearer"][0].as_str();
        let path = concrete(&path, "ghost@1.0.0");
        let body = (method_name == "POST").then(|| json!({}));
        for (scope, key) in api.keys.single_scoped() {
            let reply = api.call(method(&method_name), &path, Some(key), body.clone());
            match needed {
                Some(needed) if needed != scope => {
                    reply.assert_error(403, "forbidden");
                    assert!(reply.message().contains(needed), "{reply:?}");
                    assert!(
                        reply
                            .header("www-authenticate")
                            .contains("insufficient_scope"),
                        "{reply:?}"
                    );
                }
                _ => assert!(
                    reply.status != 401 && reply.status != 403,
                    "{method_name} {path} with {scope}: {reply:?}"
                ),
            }
            checked += 1;
        }
        let reply = api.call(
            method(&method_name),
            &path,
            Some(&api.keys.all),
            body.clone(),
        );
        assert!(reply.status != 401 && reply.status != 403, "{reply:?}");
        let anonymous = api.call(method(&method_name), &path, None, body);
        if security.as_array().unwrap().is_empty() {
            assert_eq!(anonymous.status, 200, "{path} is public");
        } else {
            anonymous.assert_error(401, "unauthorized");
            assert!(anonymous.header("www-authenticate").starts_with("Bearer"));
        }
    }
    assert_eq!(checked, 14 * 6);
}

#[test]
fn missing_malformed_unknown_and_revoked_keys_get_401() {
    let api = Api::start();
    let valid = api.keys.read.clone();
    let unknown = format!("pb_{}_{}", "0123456789abcdef", "ab".repeat(32));
    let wrong_secret = format!(
        "{}{}",
        &valid[..valid.len() - 2],
        if valid.ends_with("00") { "11" } else { "00" }
    );
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "missing `Authorization"),
        (
            "malformed",
            Some("Bearer not-a-key".to_owned()),
            "malformed API key",
        ),
        (
            "other scheme",
            Some(format!("Basic {valid}")),
            "Bearer scheme",
        ),
        (
            "unknown",
            Some(format!("Bearer {unknown}")),
            "unknown API key",
        ),
        (
            "wrong secret",
            Some(format!("Bearer {wrong_secret}")),
            "unknown API key",
        ),
        (
            "revoked",
            Some(format!("Bearer {}", api.keys.revoked)),
            "was revoked",
        ),
    ];
    for (what, header, needle) in cases {
        let mut request = api.client.get(format!("{}/plugins", api.base));
        if let Some(header) = &header {
            request = request.header("authorization", header);
        }
        let response = request.send().unwrap();
        assert_eq!(response.status(), 401, "{what}");
        assert!(response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let body: Value = response.json().unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{what}: {message}");
        assert!(
            !message.contains(&valid[19..]),
            "{what}: the secret is never echoed"
        );
        assert!(
            !message.contains(&unknown[19..]),
            "{what}: the secret is never echoed"
        );
    }
    assert_eq!(
        api.call(Method::GET, "/plugins", Some(&valid), None).status,
        200
    );
    assert_eq!(
        api.call(Method::GET, "/plugins", Some(&format!("  {valid}  ")), None)
            .status,
        200
    );
}

#[test]
fn keys_never_reach_the_logs() {
    let api = Api::start();
    let unknown = format!("pb_{}_{}", "fedcba9876543210", "cd".repeat(32));
    for key in [&api.keys.all, &api.keys.read, &api.keys.revoked, &unknown] {
        api.call(Method::GET, "/plugins", Some(key), None);
        api.call(
            Method::POST,
            "/plugins/register",
            Some(key),
            Some(json!({})),
        );
    }
    api.ready("fixture-noop");
    let logs = logs();
    assert!(
        logs.contains("/plugins"),
        "the capture sees the server's requests"
    );
    for key in [&api.keys.all, &api.keys.read, &api.keys.revoked, &unknown] {
        let secret = &key[20..];
        assert!(!logs.contains(secret), "a key's secret was logged");
    }
    assert!(
        !logs.to_ascii_lowercase().contains("authorization: bearer"),
        "an authorization header was logged"
    );
}

// ---------------------------------------------------------------------------------
// The OpenAPI document against the server
// ---------------------------------------------------------------------------------

#[test]
fn the_openapi_document_lists_exactly_the_routes_the_server_has() {
    let api = Api::start();
    let reply = api.call(Method::GET, "/openapi.json", Some(&api.keys.execute), None);
    assert_eq!(reply.status, 200);
    let doc = reply.body;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc,
        plugbay_host::server::openapi(),
        "the served document is the library's"
    );
    let routes = documented(&doc);
    let pairs: BTreeSet<(String, String)> = routes.keys().cloned().collect();
    let expected: BTreeSet<(String, String)> = [
        ("GET", "/health"),
        ("GET", "/openapi.json"),
        ("GET", "/plugins"),
        ("GET", "/plugins/{id}"),
        ("POST", "/plugins/register"),
        ("PUT", "/plugins/{id}"),
        ("PUT", "/plugins/{id}/enable"),
        ("PUT", "/plugins/{id}/disable"),
        ("DELETE", "/plugins/{id}"),
        ("POST", "/plugins/{id}/review"),
        ("POST", "/plugins/{id}/process"),
        ("POST", "/plugins/{id}/upgrade"),
        ("POST", "/plugins/install"),
        ("POST", "/plugins/{id}/publish"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(
        pairs, expected,
        "the seed's endpoints plus put, review, process, upgrade, health, openapi, install and publish"
    );

    let paths: BTreeSet<&String> = routes.keys().map(|(_, path)| path).collect();
    for path in paths {
        let url = concrete(path, "ghost@1.0.0");
        for name in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let documented = routes.contains_key(&(name.to_owned(), path.clone()));
            let body = (name == "POST").then(|| json!({}));
            let reply = api.call(method(name), &url, Some(&api.keys.all), body);
            if documented {
                assert!(
                    reply.status != 404 || reply.code() == "not_found",
                    "{name} {url}: {reply:?}"
                );
                assert_ne!(reply.status, 405, "{name} {url}: {reply:?}");
            } else {
                reply.assert_error(405, "method_not_allowed");
                for allowed in reply.header("allow").split(',').map(str::trim) {
                    let allowed_documented =
                        routes.contains_key(&(allowed.to_owned(), path.clone()));
                    assert!(
                        allowed_documented || allowed == "HEAD",
                        "{path} allows undocumented {allowed}"
                    );
                }
            }
        }
        // HEAD is answered wherever GET is, without a body.
        if routes.contains_key(&("GET".to_owned(), path.clone())) {
            let head = api.call(Method::HEAD, &url, Some(&api.keys.all), None);
            let get = api.call(Method::GET, &url, Some(&api.keys.all), None);
            assert_eq!(head.status, get.status, "HEAD {url}");
            assert!(head.text.is_empty());
        }
    }
    for unknown in [
        "/",
        "/plugin",
        "/plugins/a@1.0.0/start",
        "/v1/plugins",
        "/plugins/a@1.0.0/review/x",
    ] {
        let reply = api.call(Method::GET, unknown, Some(&api.keys.all), None);
        reply.assert_error(404, "route_not_found");
        assert!(reply.message().contains("/openapi.json"), "{reply:?}");
    }
}

type Run<'a> = Box<dyn Fn() -> Reply + 'a>;

fn request<'a>(
    api: &'a Api,
    m: Method,
    path: String,
    key: Option<&'a str>,
    body: Option<Value>,
) -> Run<'a> {
    Box::new(move || api.call(m.clone(), &path, key, body.clone()))
}

/// Runs one scenario per documented `(method, path, status)` and checks that the
/// server answers it with a body that matches the documented schema, and that every
/// documented status has a scenario.
#[test]
fn every_documented_status_is_produced_and_matches_its_schema() {
    let api = Api::start_with(|options| {
        options.body_limit = 64 * 1024;
        options.request_timeout = Duration::from_secs(20);
    });
    // A second server on the same registry, with a short request timeout.
    let mut impatient_options = options(&api.home);
    impatient_options.request_timeout = Duration::from_millis(800);
    let impatient = Server::bind(impatient_options).unwrap().spawn().unwrap();
    let impatient_base = format!("http://{}", impatient.local_addr());

    let doc = api
        .call(Method::GET, "/openapi.json", Some(&api.keys.read), None)
        .body;
    let keys = &api.keys;
    let dp = api.ready("data-processor");
    let faulty = api.ready("fixture-faulty");
    let raw = api.ready("fixture-raw-output");
    let pending = {
        let reply = api.call(
            Method::POST,
            "/plugins/register",
            Some(&keys.write),
            Some(seed_body("dedup")),
        );
        reply.body["id"].as_str().unwrap().to_owned()
    };
    let prober = {
        let reply = api.call(
            Method::POST,
            "/plugins/register",
            Some(&keys.write),
            Some(seed_body("fixture-prober")),
        );
        reply.body["id"].as_str().unwrap().to_owned()
    };
    let doomed = {
        let reply = api.call(
            Method::POST,
            "/plugins/register",
            Some(&keys.write),
            Some(seed_body("enricher")),
        );
        reply.body["id"].as_str().unwrap().to_owned()
    };
    // A stored library tampered with after registration.
    let swapped = {
        let library = plugin_copy(api.dir.path(), "redactor");
        let mut body = seed_body("redactor");
        body["entry_point"] = json!(library.display().to_string());
        let reply = api.call(
            Method::POST,
            "/plugins/register",
            Some(&keys.write),
            Some(body),
        );
        assert_eq!(reply.status, 201, "{reply:?}");
        let stored = std::path::PathBuf::from(reply.body["library"].as_str().unwrap());
        make_writable(&stored);
        std::fs::copy(plugbay_tests::library("dedup"), &stored).unwrap();
        reply.body["id"].as_str().unwrap().to_owned()
    };
    // The next version of noop, beside the noop@0.1.0 that `POST /plugins/register`
    // registers below: the bare name `noop` is then ambiguous.
    let reply = api.call(
        Method::POST,
        "/plugins/register",
        Some(&keys.write),
        Some(seed_body("fixture-noop-next")),
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    let ghost = "ghost@1.0.0";
    let big = json!({"padding": "x".repeat(70 * 1024)});

    // (method, documented path, status, request)
    let mut scenarios: Vec<(&str, &str, u16, Run)> = Vec::new();
    macro_rules! scenario {
        ($method:literal, $path:literal, $status:literal, $key:expr, $id:expr, $body:expr) => {
            scenarios.push((
                $method,
                $path,
                $status,
                request(&api, method($method), concrete($path, $id), $key, $body),
            ))
        };
    }
    let (read, write, review, execute) = (
        Some(keys.read.as_str()),
        Some(keys.write.as_str()),
        Some(keys.review.as_str()),
        Some(keys.execute.as_str()),
    );
    let records = || Some(json!([{"n": 1}, {"n": 2}]));

    scenario!("GET", "/health", 200, None, "", None);
    scenario!("GET", "/openapi.json", 200, read, "", None);
    scenario!("GET", "/openapi.json", 401, None, "", None);
    scenario!("GET", "/plugins", 200, read, "", None);
    scenario!("GET", "/plugins", 401, None, "", None);
    scenario!("GET", "/plugins", 403, write, "", None);
    scenario!("GET", "/plugins/{id}", 200, read, &dp, None);
    scenario!("GET", "/plugins/{id}", 400, read, "no@version", None);
    scenario!("GET", "/plugins/{id}", 401, None, &dp, None);
    scenario!("GET", "/plugins/{id}", 403, execute, &dp, None);
    scenario!("GET", "/plugins/{id}", 404, read, ghost, None);
    scenario!(
        "POST",
        "/plugins/register",
        201,
        write,
        "",
        Some(seed_body("fixture-noop"))
    );
    scenario!(
        "POST",
        "/plugins/register",
        400,
        write,
        "",
        Some(
            json!({"name": "x", "version": "1.0.0", "entry_point": "https://example.com/lib.so", "permissions": []})
        )
    );
    scenario!(
        "POST",
        "/plugins/register",
        401,
        None,
        "",
        Some(seed_body("fixture-noop"))
    );
    scenario!(
        "POST",
        "/plugins/register",
        403,
        review,
        "",
        Some(seed_body("fixture-noop"))
    );
    scenario!(
        "POST",
        "/plugins/register",
        409,
        write,
        "",
        Some(seed_body("fixture-noop"))
    );
    scenario!(
        "POST",
        "/plugins/register",
        413,
        write,
        "",
        Some(big.clone())
    );
    scenario!(
        "POST",
        "/plugins/{id}/process",
        200,
        execute,
        &dp,
        records()
    );
    scenario!(
        "POST",
        "/plugins/{id}/process",
        400,
        execute,
        &dp,
        Some(json!({"n": 1}))
    );
    scenario!("POST", "/plugins/{id}/process", 401, None, &dp, records());
    scenario!("POST", "/plugins/{id}/process", 403, read, &dp, records());
    scenario!(
        "POST",
        "/plugins/{id}/process",
        404,
        execute,
        ghost,
        records()
    );
    scenario!(
        "POST",
        "/plugins/{id}/process",
        409,
        execute,
        &pending,
        records()
    );
    scenario!(
        "POST",
        "/plugins/{id}/process",
        413,
        execute,
        &dp,
        Some(json!([big.clone()]))
    );
    scenario!(
        "POST",
        "/plugins/{id}/process",
        502,
        execute,
        &raw,
        records()
    );
    scenarios.push((
        "POST",
        "/plugins/{id}/process",
        422,
        Box::new(|| {
            configure(&api, &faulty, json!({"fail": "process"}));
            api.call(
                Method::POST,
                &format!("/plugins/{faulty}/process"),
                execute,
                records(),
            )
        }),
    ));
    scenarios.push((
        "POST",
        "/plugins/{id}/process",
        500,
        Box::new(|| {
            configure(&api, &faulty, json!({"panic": "process"}));
            api.call(
                Method::POST,
                &format!("/plugins/{faulty}/process"),
                execute,
                records(),
            )
        }),
    ));
    scenarios.push((
        "POST",
        "/plugins/{id}/process",
        504,
        Box::new(|| {
            configure(&api, &faulty, json!({"hang": "process"}));
            api.call(
                Method::POST,
                &format!("/plugins/{faulty}/process"),
                execute,
                records(),
            )
        }),
    ));
    scenarios.push((
        "POST",
        "/plugins/{id}/process",
        503,
        Box::new(|| {
            configure(&api, &faulty, json!({"hang": "process"}));
            let started = Instant::now();
            let reply = call(
                &api.client,
                &impatient_base,
                Method::POST,
                &format!("/plugins/{faulty}/process"),
                execute,
                records().map(|b| b.to_string().into_bytes()),
            );
            assert!(
                started.elapsed() < Duration::from_millis(1900),
                "answered at the request deadline, before the plugin's"
            );
            reply
        }),
    ));
    scenario!("PUT", "/plugins/{id}/disable", 200, write, &dp, None);
    scenario!(
        "PUT",
        "/plugins/{id}/disable",
        400,
        write,
        "no@version",
        None
    );
    scenario!("PUT", "/plugins/{id}/disable", 401, None, &dp, None);
    scenario!("PUT", "/plugins/{id}/disable", 403, review, &dp, None);
    scenario!("PUT", "/plugins/{id}/disable", 404, write, ghost, None);
    scenario!("PUT", "/plugins/{id}/enable", 200, write, &dp, None);
    scenario!(
        "PUT",
        "/plugins/{id}/enable",
        400,
        write,
        "no@version",
        None
    );
    scenario!("PUT", "/plugins/{id}/enable", 401, None, &dp, None);
    scenario!("PUT", "/plugins/{id}/enable", 403, execute, &dp, None);
    scenario!("PUT", "/plugins/{id}/enable", 404, write, ghost, None);
    scenario!("PUT", "/plugins/{id}/enable", 409, write, &pending, None);
    scenario!(
        "POST",
        "/plugins/{id}/review",
        200,
        review,
        &prober,
        Some(json!({"decision": "reject", "reason": "probes the sandbox"}))
    );
    scenario!(
        "POST",
        "/plugins/{id}/review",
        400,
        review,
        &prober,
        Some(json!({"decision": "maybe"}))
    );
    scenario!(
        "POST",
        "/plugins/{id}/review",
        401,
        None,
        &prober,
        Some(json!({"decision": "approve"}))
    );
    scenario!(
        "POST",
        "/plugins/{id}/review",
        403,
        write,
        &prober,
        Some(json!({"decision": "approve"}))
    );
    scenario!(
        "POST",
        "/plugins/{id}/review",
        404,
        review,
        ghost,
        Some(json!({"decision": "approve"}))
    );
    scenario!(
        "POST",
        "/plugins/{id}/review",
        409,
        review,
        &swapped,
        Some(json!({"decision": "approve"}))
    );
    scenario!(
        "POST",
        "/plugins/{id}/review",
        413,
        review,
        &prober,
        Some(big.clone())
    );
    // A plugin put at its id: new (201), or the same library again (200).
    let put_new = seed_body("fixture-sequencer-next");
    let put_id = format!(
        "{}@{}",
        put_new["name"].as_str().unwrap(),
        put_new["version"].as_str().unwrap()
    );
    scenario!(
        "PUT",
        "/plugins/{id}",
        201,
        write,
        &put_id,
        Some(put_new.clone())
    );
    scenario!(
        "PUT",
        "/plugins/{id}",
        200,
        write,
        &dp,
        Some(seed_body("data-processor"))
    );
    scenario!(
        "PUT",
        "/plugins/{id}",
        400,
        write,
        "data-processor",
        Some(seed_body("data-processor"))
    );
    scenario!(
        "PUT",
        "/plugins/{id}",
        401,
        None,
        &dp,
        Some(seed_body("data-processor"))
    );
    scenario!(
        "PUT",
        "/plugins/{id}",
        403,
        read,
        &dp,
        Some(seed_body("data-processor"))
    );
    scenario!("PUT", "/plugins/{id}", 413, write, &dp, Some(big.clone()));
    scenario!("DELETE", "/plugins/{id}", 200, write, &doomed, None);
    scenario!("DELETE", "/plugins/{id}", 400, write, "no@version", None);
    scenario!("DELETE", "/plugins/{id}", 401, None, &dp, None);
    scenario!("DELETE", "/plugins/{id}", 403, read, &dp, None);
    scenario!("DELETE", "/plugins/{id}", 404, write, ghost, None);
    // Run after noop@0.1.0 was registered above: two versions, none enabled.
    scenario!("GET", "/plugins/{id}", 409, read, "noop", None);
    scenario!("PUT", "/plugins/{id}/disable", 409, write, "noop", None);
    scenario!("DELETE", "/plugins/{id}", 409, write, "noop", None);
    // Upgrades: `sequencer@1.0.0` is current, `sequencer@3.0.0` does not start.
    let sequencer = api.ready("sequencer");
    let broken = api.ready("fixture-sequencer-broken");
    scenario!(
        "POST",
        "/plugins/{id}/upgrade",
        200,
        write,
        &sequencer,
        None
    );
    scenario!(
        "POST",
        "/plugins/{id}/upgrade",
        400,
        write,
        "no@version",
        None
    );
    scenario!("POST", "/plugins/{id}/upgrade", 401, None, &sequencer, None);
    scenario!(
        "POST",
        "/plugins/{id}/upgrade",
        403,
        execute,
        &sequencer,
        None
    );
    scenario!("POST", "/plugins/{id}/upgrade", 404, write, ghost, None);
    scenario!("POST", "/plugins/{id}/upgrade", 409, write, &pending, None);
    scenario!("POST", "/plugins/{id}/upgrade", 500, write, &broken, None);

    // The marketplace routes. A registry that refuses every connection stands in for
    // an unreachable one; the outcomes that need a real registry run against the
    // distribution registry when it is installed.
    let (install, publish) = (Some(keys.install.as_str()), Some(keys.publish.as_str()));
    let unreachable = "oci://127.0.0.1:1/team";
    let signing = tempfile::tempdir().unwrap();
    let (signing_key, _) = crate::market::reviewer_key(signing.path(), "alice");
    let signing_key = plugbay_host::attestation::SigningKey::from_file(&signing_key).unwrap();
    let sign = |package: &str| -> String {
        let reply = api.call(
            Method::POST,
            "/plugins/register",
            Some(&keys.write),
            Some(seed_body(package)),
        );
        assert_eq!(reply.status, 201, "{reply:?}");
        let id = reply.body["id"].as_str().unwrap().to_owned();
        api.registry()
            .approve_signed(
                &id,
                "alice",
                None,
                plugbay_host::Isolation::Process,
                &signing_key,
                &[],
            )
            .unwrap();
        id
    };
    let signed = sign("fixture-raw-value");
    let name = |id: &str| id.split('@').next().unwrap().to_owned();
    scenario!(
        "POST",
        "/plugins/install",
        400,
        install,
        "",
        Some(json!({"reference": "raw-value@0.1.0"}))
    );
    scenario!(
        "POST",
        "/plugins/install",
        401,
        None,
        "",
        Some(json!({"reference": format!("{unreachable}/x:1.0.0")}))
    );
    scenario!(
        "POST",
        "/plugins/install",
        403,
        publish,
        "",
        Some(json!({"reference": format!("{unreachable}/x:1.0.0")}))
    );
    scenario!(
        "POST",
        "/plugins/install",
        413,
        install,
        "",
        Some(big.clone())
    );
    scenario!(
        "POST",
        "/plugins/install",
        502,
        install,
        "",
        Some(json!({"reference": format!("{unreachable}/x:1.0.0")}))
    );
    scenario!(
        "POST",
        "/plugins/{id}/publish",
        400,
        publish,
        &signed,
        Some(json!({"reference": "ghcr.io/x"}))
    );
    scenario!(
        "POST",
        "/plugins/{id}/publish",
        401,
        None,
        &signed,
        Some(json!({"reference": format!("{unreachable}/x")}))
    );
    scenario!(
        "POST",
        "/plugins/{id}/publish",
        403,
        install,
        &signed,
        Some(json!({"reference": format!("{unreachable}/x")}))
    );
    scenario!(
        "POST",
        "/plugins/{id}/publish",
        404,
        publish,
        ghost,
        Some(json!({"reference": format!("{unreachable}/ghost")}))
    );
    scenario!(
        "POST",
        "/plugins/{id}/publish",
        409,
        publish,
        &dp,
        Some(json!({"reference": format!("{unreachable}/data-processor")}))
    );
    scenario!(
        "POST",
        "/plugins/{id}/publish",
        413,
        publish,
        &signed,
        Some(big.clone())
    );
    scenario!(
        "POST",
        "/plugins/{id}/publish",
        502,
        publish,
        &signed,
        Some(json!({"reference": format!("{unreachable}/{}", name(&signed))}))
    );
    let distribution = crate::market::Distribution::start();
    let mut need_a_registry = BTreeSet::new();
    if let Some(registry) = &distribution {
        use plugbay_host::market::{block_on, Market, PluginRef, PublishBundle};
        // Published, then unregistered here: installing it registers it again.
        let publish_now = |id: &str| -> String {
            let bundle = PublishBundle::from_registry(&api.registry(), id, &[]).unwrap();
            let target = PluginRef::parse(&registry.oci(&format!("team/{}", name(id)))).unwrap();
            let published = block_on(Market::default().publish(&bundle, &target, false)).unwrap();
            published.reference
        };
        let away = sign("fixture-crasher");
        let away_reference = publish_now(&away);
        api.registry().unregister(&away, "test").unwrap();
        // Published, then its library changed on the registry's disk.
        let tampered = sign("fixture-fd-scanner");
        let tampered_reference = publish_now(&tampered);
        let bytes = std::fs::read(plugbay_tests::library("fixture-fd-scanner")).unwrap();
        let digest = format!("sha256:{}", crate::market::sha256(&bytes));
        let blob = registry.blob_file(&digest);
        let mut stored = std::fs::read(&blob).unwrap();
        stored[1000] ^= 0xff;
        std::fs::write(&blob, stored).unwrap();
        let target = registry.oci(&format!("team/{}", name(&signed)));
        scenario!(
            "POST",
            "/plugins/{id}/publish",
            200,
            publish,
            &signed,
            Some(json!({"reference": target}))
        );
        scenario!(
            "POST",
            "/plugins/install",
            201,
            install,
            "",
            Some(json!({"reference": away_reference}))
        );
        scenario!(
            "POST",
            "/plugins/install",
            409,
            install,
            "",
            Some(json!({"reference": format!("{target}:0.1.0")}))
        );
        scenario!(
            "POST",
            "/plugins/install",
            422,
            install,
            "",
            Some(json!({"reference": tampered_reference}))
        );
    } else {
        for (method_name, path, status) in [
            ("POST", "/plugins/{id}/publish", 200),
            ("POST", "/plugins/install", 201),
            ("POST", "/plugins/install", 409),
            ("POST", "/plugins/install", 422),
        ] {
            need_a_registry.insert((method_name.to_owned(), path.to_owned(), status));
        }
        eprintln!("skipped {need_a_registry:?}: docker-registry is not installed");
    }

    let routes = documented(&doc);
    let mut expected = BTreeSet::new();
    for ((method_name, path), responses) in &routes {
        for status in responses.keys().filter(|status| *status != "default") {
            let key = (
                method_name.clone(),
                path.clone(),
                status.parse::<u16>().unwrap(),
            );
            if !need_a_registry.contains(&key) {
                expected.insert(key);
            }
        }
    }
    let covered: BTreeSet<(String, String, u16)> = scenarios
        .iter()
        .map(|(m, p, s, _)| (m.to_string(), p.to_string(), *s))
        .collect();
    assert_eq!(
        covered.len(),
        scenarios.len(),
        "one scenario per documented status"
    );
    assert_eq!(
        covered, expected,
        "the scenarios are exactly the documented statuses"
    );

    for (method_name, path, status, request) in &scenarios {
        let reply = request();
        let what = format!("{method_name} {path} → {status}");
        assert_eq!(reply.status.as_u16(), *status, "{what}: {reply:?}");
        let response = &routes[&(method_name.to_string(), path.to_string())][&status.to_string()];
        let schema = &response["content"]["application/json"]["schema"];
        assert!(
            reply.header("content-type").starts_with("application/json"),
            "{what}: {reply:?}"
        );
        validate(&doc, schema, &reply.body, "body")
            .unwrap_or_else(|err| panic!("{what}: {err}; {reply:?}"));
        if *status >= 400 {
            let code = reply.code();
            let description = response["description"].as_str().unwrap();
            assert!(
                description.contains(&format!("`{code}`")),
                "{what}: code `{code}` is not documented in {description:?}"
            );
        }
    }
    // The documented `default` response covers everything else with the same schema.
    for responses in routes.values() {
        assert_eq!(
            responses["default"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error"
        );
    }
    let plugin = api.call(Method::GET, &format!("/plugins/{dp}"), read, None);
    validate(
        &doc,
        &json!({"$ref": "#/components/schemas/Plugin"}),
        &plugin.body,
        "plugin",
    )
    .unwrap();
    drop(scenarios);
    impatient.stop().unwrap();
}

#[test]
fn an_oversized_body_gets_its_413_not_a_reset() {
    let api = Api::start_with(|options| options.body_limit = 4096);
    let key = Some(api.keys.all.as_str());
    // The client is still sending when the server knows its answer: the server reads
    // the rest before it answers and closes, or the client sees a reset instead.
    for size in [10_000, 1_000_000, 8_000_000] {
        for _ in 0..3 {
            let mut body = vec![b' '; size];
            body[0] = b'[';
            body[size - 1] = b']';
            api.raw(Method::POST, "/plugins/x@1.0.0/process", key, body)
                .assert_error(413, "payload_too_large");
        }
    }
}

#[test]
fn errors_are_json_everywhere() {
    let api = Api::start_with(|options| options.body_limit = 4096);
    let key = Some(api.keys.all.as_str());
    api.call(Method::GET, "/nope", key, None)
        .assert_error(404, "route_not_found");
    api.call(Method::GET, "/nope", None, None)
        .assert_error(404, "route_not_found");
    let reply = api.call(Method::PATCH, "/plugins", key, None);
    reply.assert_error(405, "method_not_allowed");
    assert_eq!(reply.header("allow"), "GET,HEAD");
    assert!(reply.message().contains("it allows GET, HEAD"), "{reply:?}");
    api.call(Method::DELETE, "/health", None, None)
        .assert_error(405, "method_not_allowed");
    api.call(Method::GET, "/plugins/register", key, None)
        .assert_error(405, "method_not_allowed");
    api.call(Method::GET, "/plugins/%FF%FE@1.0.0", key, None)
        .assert_error(400, "invalid_id");
    api.call(Method::GET, "/plugins/nope", key, None)
        .assert_error(404, "not_found");
    api.call(Method::GET, "/plugins/No_Pe", key, None)
        .assert_error(400, "invalid_id");
    api.raw(Method::POST, "/plugins/register", key, b"[1, 2".to_vec())
        .assert_error(400, "invalid_body");
    api.raw(Method::POST, "/plugins/register", key, b"{} {}".to_vec())
        .assert_error(400, "invalid_body");
    api.raw(Method::POST, "/plugins/register", key, vec![b' '; 5000])
        .assert_error(413, "payload_too_large");
    api.raw(
        Method::POST,
        "/plugins/x@1.0.0/process",
        key,
        b"[1,".to_vec(),
    )
    .assert_error(400, "invalid_body");
    // A client that does not say how long its body is (chunked) is cut off too.
    let chunk = "x".repeat(3000);
    let request = format!(
        "POST /plugins/register HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        api.keys.all,
        chunk.len(),
        chunk.len()
    );
    let (status, head, body) = raw_http(api.addr(), request.as_bytes());
    assert_eq!(status, 413, "{head}");
    assert_eq!(body["error"]["code"], "payload_too_large", "{head} {body}");
    // Content types are not fussed over: the body is JSON whatever the header says.
    let response = api
        .client
        .post(format!("{}/plugins/register", api.base))
        .header("authorization", format!("Bearer {}", api.keys.all))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["field"], "name", "{body}");
}

// ---------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    fn add(&self, what: impl Into<String>) {
        *self.counts.lock().unwrap().entry(what.into()).or_default() += 1;
    }
    fn get(&self, what: &str) -> usize {
        self.counts.lock().unwrap().get(what).copied().unwrap_or(0)
    }
}

#[test]
fn fifty_concurrent_clients_lose_and_corrupt_nothing() {
    const CLIENTS: usize = 50;
    const ROUNDS: usize = 4;
    let api = Api::start();
    let dp = api.ready("data-processor");
    let redactor = api.ready("redactor");
    let noop = api.ready("fixture-noop");
    let tally = Tally::default();
    let barrier = Barrier::new(CLIENTS);
    let failures = AtomicUsize::new(0);

    std::thread::scope(|scope| {
        for client_index in 0..CLIENTS {
            let (api, tally, barrier, failures) = (&api, &tally, &barrier, &failures);
            let (dp, redactor, noop) = (&dp, &redactor, &noop);
            scope.spawn(move || {
                let client = client();
                let send = |m: Method, path: &str, key: &str, body: Option<Value>| {
                    call(
                        &client,
                        &api.base,
                        m,
                        path,
                        Some(key),
                        body.map(|b| b.to_string().into_bytes()),
                    )
                };
                let keys = &api.keys;
                barrier.wait();
                // Everyone registers the same plugin at once: one wins.
                let reply = send(
                    Method::POST,
                    "/plugins/register",
                    &keys.write,
                    Some(seed_body("dedup")),
                );
                tally.add(format!("register {}", reply.status.as_u16()));
                for round in 0..ROUNDS {
                    let records: Vec<Value> = (0..5)
                        .map(|k| json!({"client": client_index, "round": round, "k": k}))
                        .collect();
                    let reply = send(
                        Method::POST,
                        &format!("/plugins/{dp}/process"),
                        &keys.execute,
                        Some(json!(records)),
                    );
                    if reply.status == 200 {
                        let out = reply.body.as_array().unwrap();
                        let intact = out.len() == records.len()
                            && out.iter().zip(&records).all(|(out, input)| {
                                out["client"] == input["client"]
                                    && out["round"] == input["round"]
                                    && out["k"] == input["k"]
                                    && out["processed"] == true
                            });
                        if !intact {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        tally.add("dp 200");
                    } else {
                        tally.add(format!("dp {} {}", reply.status.as_u16(), reply.text));
                    }
                    let reply = send(
                        Method::POST,
                        &format!("/plugins/{noop}/process"),
                        &keys.execute,
                        Some(json!(records)),
                    );
                    if reply.status != 200 || reply.body != json!(records) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    if client_index % 5 == 0 {
                        let action = if round % 2 == 0 { "disable" } else { "enable" };
                        let reply = send(
                            Method::PUT,
                            &format!("/plugins/{redactor}/{action}"),
                            &keys.write,
                            None,
                        );
                        tally.add(format!("{action} {}", reply.status.as_u16()));
                    }
                    let reply = send(
                        Method::POST,
                        &format!("/plugins/{redactor}/process"),
                        &keys.execute,
                        Some(json!([{"email": format!("client{client_index}@example.com")}])),
                    );
                    match reply.status.as_u16() {
                        200 => {
                            if reply.body[0]["email"]
                                .as_str()
                                .unwrap()
                                .contains("example.com")
                            {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                            tally.add("redactor 200");
                        }
                        409 if reply.code() == "disabled" => tally.add("redactor 409"),
                        other => tally.add(format!("redactor {other} {}", reply.text)),
                    }
                    let reply = send(Method::GET, "/plugins", &keys.read, None);
                    let listed = reply.body["plugins"].as_array().map_or(0, Vec::len);
                    if reply.status != 200 || !(3..=4).contains(&listed) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });

    let counts = tally.counts.lock().unwrap().clone();
    assert_eq!(failures.load(Ordering::Relaxed), 0, "{counts:?}");
    assert_eq!(tally.get("register 201"), 1, "{counts:?}");
    assert_eq!(tally.get("register 409"), CLIENTS - 1, "{counts:?}");
    assert_eq!(tally.get("dp 200"), CLIENTS * ROUNDS, "{counts:?}");
    assert_eq!(
        tally.get("redactor 200") + tally.get("redactor 409"),
        CLIENTS * ROUNDS,
        "{counts:?}"
    );
    let togglers = CLIENTS / 5;
    assert_eq!(
        tally.get("disable 200"),
        togglers * ROUNDS / 2,
        "{counts:?}"
    );
    assert_eq!(tally.get("enable 200"), togglers * ROUNDS / 2, "{counts:?}");

    let registry = api.registry();
    assert!(registry.integrity_ok().unwrap());
    let ids: Vec<String> = registry.list().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        [
            "data-processor@1.0.0",
            "dedup@1.0.0",
            "noop@0.1.0",
            "redactor@1.0.0"
        ]
    );
    let audit = registry.audit_log(None).unwrap();
    let count = |action: &str, id: &str| {
        audit
            .iter()
            .filter(|e| e.action == action && e.plugin_id.as_deref() == Some(id))
            .count()
    };
    assert_eq!(count("register", "dedup@1.0.0"), 1);
    assert_eq!(count("enable", &redactor), 1 + tally.get("enable 200"));
    assert_eq!(count("disable", &redactor), tally.get("disable 200"));
    assert!(
        registry.get(&redactor).unwrap().enabled,
        "the last toggle enabled it"
    );
}

#[test]
fn the_cli_and_the_server_share_one_registry() {
    const ROUNDS: usize = 10;
    let api = Api::start();
    let plugbay = plugbay_tests::plugbay_bin();
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(plugbay)
            .arg("--home")
            .arg(&api.home)
            .args(args)
            .env("USER", "cli-operator")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "plugbay {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };

    // A key created by the CLI works on the running server at once, with its scopes.
    let token = cli(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--scope",
        "plugins:read",
        "plugins:execute",
    ]);
    let token = token.trim();
    assert_eq!(
        api.call(Method::GET, "/plugins", Some(token), None).status,
        200
    );
    api.call(Method::PUT, "/plugins/x@1.0.0/enable", Some(token), None)
        .assert_error(403, "forbidden");

    let dp = api.ready("data-processor");
    let redactor = api.ready("redactor");
    // Warm up an instance that the CLI will disable under the server.
    let reply = api.call(
        Method::POST,
        &format!("/plugins/{redactor}/process"),
        Some(token),
        Some(json!([{"a": "b@c.de"}])),
    );
    assert_eq!(reply.status, 200, "{reply:?}");

    let dedup_dir = example_manifest("dedup")
        .parent()
        .unwrap()
        .display()
        .to_string();
    let dedup_library = library("dedup").display().to_string();
    let mut http_registered = 0;
    let mut processed = 0;
    std::thread::scope(|scope| {
        // The CLI, in separate processes: register, approve, enable and unregister a
        // plugin, and toggle another, round after round.
        let operator = scope.spawn(|| {
            for round in 0..ROUNDS {
                cli(&["register", &dedup_dir, "--library", &dedup_library]);
                cli(&["review", "approve", "dedup@1.0.0"]);
                cli(&["enable", "dedup@1.0.0"]);
                cli(&["--json", "show", "dedup@1.0.0"]);
                cli(&["unregister", "dedup@1.0.0"]);
                let toggle = if round % 2 == 0 { "disable" } else { "enable" };
                cli(&[toggle, "redactor@1.0.0"]);
            }
            cli(&["disable", "redactor@1.0.0"]);
        });
        // Meanwhile, over HTTP: register and unregister another plugin, process
        // batches and list, until the CLI is done.
        while !operator.is_finished() || http_registered < 3 {
            let reply = api.call(
                Method::POST,
                "/plugins/register",
                Some(&api.keys.write),
                Some(seed_body("fixture-noop")),
            );
            assert_eq!(reply.status, 201, "{reply:?}");
            let reply = api.call(
                Method::DELETE,
                "/plugins/noop@0.1.0",
                Some(&api.keys.write),
                None,
            );
            assert_eq!(reply.status, 200, "{reply:?}");
            http_registered += 1;
            let reply = api.call(
                Method::POST,
                &format!("/plugins/{dp}/process"),
                Some(token),
                Some(json!([{"i": processed}])),
            );
            assert_eq!(reply.status, 200, "{reply:?}");
            assert_eq!(reply.body[0]["i"], processed);
            processed += 1;
            let reply = api.call(Method::GET, "/plugins", Some(token), None);
            assert_eq!(reply.status, 200, "{reply:?}");
        }
        operator.join().unwrap();
    });

    // The server sees what the CLI did, at once.
    let shown = api.call(
        Method::GET,
        &format!("/plugins/{redactor}"),
        Some(token),
        None,
    );
    assert_eq!(shown.body["enabled"], false);
    api.call(Method::GET, "/plugins/dedup@1.0.0", Some(token), None)
        .assert_error(404, "not_found");
    // A plugin disabled by the CLI stops here too: its instance is drained.
    let reply = api.call(
        Method::POST,
        &format!("/plugins/{redactor}/process"),
        Some(token),
        Some(json!([])),
    );
    reply.assert_error(409, "disabled");
    let health = api.call(Method::GET, "/health", None, None);
    assert_eq!(
        health.body["instances"], 1,
        "only data-processor still runs: {health:?}"
    );
    // And the CLI sees what the server did.
    let listed: Value = serde_json::from_str(&cli(&["--json", "list"])).unwrap();
    assert!(
        listed.to_string().contains("data-processor@1.0.0"),
        "{listed}"
    );

    let registry = api.registry();
    assert!(registry.integrity_ok().unwrap());
    let audit = registry.audit_log(None).unwrap();
    let count = |actor: &str, action: &str, id: &str| {
        audit
            .iter()
            .filter(|e| {
                e.actor.starts_with(actor)
                    && e.action == action
                    && e.plugin_id.as_deref() == Some(id)
            })
            .count()
    };
    assert_eq!(count("cli-operator", "register", "dedup@1.0.0"), ROUNDS);
    assert_eq!(count("cli-operator", "approve", "dedup@1.0.0"), ROUNDS);
    assert_eq!(count("cli-operator", "enable", "dedup@1.0.0"), ROUNDS);
    assert_eq!(count("cli-operator", "unregister", "dedup@1.0.0"), ROUNDS);
    assert_eq!(
        count("cli-operator", "disable", &redactor) + count("cli-operator", "enable", &redactor),
        ROUNDS + 1
    );
    assert_eq!(count("writer", "register", "noop@0.1.0"), http_registered);
    assert_eq!(count("writer", "unregister", "noop@0.1.0"), http_registered);
    let ids: Vec<String> = registry.list().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["data-processor@1.0.0", "redactor@1.0.0"]);

    // A key revoked by the CLI is refused by the running server at once.
    cli(&["keys", "revoke", "ci"]);
    let reply = api.call(Method::GET, "/plugins", Some(token), None);
    reply.assert_error(401, "unauthorized");
    assert!(reply.message().contains("revoked"), "{reply:?}");
}

// ---------------------------------------------------------------------------------
// Limits and shutdown
// ---------------------------------------------------------------------------------

#[test]
fn graceful_shutdown_on_sigterm_and_sigint_finishes_requests_and_stops_plugins() {
    logs();
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let keys = Keys::create(&home);
        let server = Server::bind(options(&home)).unwrap();
        let addr = server.local_addr();
        let base = format!("http://{addr}");
        let serving = std::thread::spawn(move || server.run_blocking());
        let client = client();
        let send = |m: Method, path: &str, key: Option<&str>, body: Option<Value>| {
            call(
                &client,
                &base,
                m,
                path,
                key,
                body.map(|b| b.to_string().into_bytes()),
            )
        };
        assert_eq!(send(Method::GET, "/health", None, None).status, 200);
        let mut ids = Vec::new();
        for package in ["data-processor", "fixture-faulty"] {
            let reply = send(
                Method::POST,
                "/plugins/register",
                Some(&keys.all),
                Some(seed_body(package)),
            );
            let id = reply.body["id"].as_str().unwrap().to_owned();
            send(
                Method::POST,
                &format!("/plugins/{id}/review"),
                Some(&keys.all),
                Some(json!({"decision": "approve"})),
            );
            send(
                Method::PUT,
                &format!("/plugins/{id}/enable"),
                Some(&keys.all),
                None,
            );
            ids.push(id);
        }
        let (dp, faulty) = (&ids[0], &ids[1]);
        Registry::open(&home)
            .unwrap()
            .configure(faulty, &json!({"hang": "process"}), "test")
            .unwrap();
        assert_eq!(
            send(
                Method::POST,
                &format!("/plugins/{dp}/process"),
                Some(&keys.all),
                Some(json!([{"x": 1}]))
            )
            .status,
            200
        );

        // A request in flight when the signal comes: the plugin hangs until its 2 s deadline.
        let in_flight = {
            let (base, key, faulty) = (format!("http://{addr}"), keys.all.clone(), faulty.clone());
            std::thread::spawn(move || {
                call(
                    &client_for_thread(),
                    &base,
                    Method::POST,
                    &format!("/plugins/{faulty}/process"),
                    Some(&key),
                    Some(b"[1]".to_vec()),
                )
            })
        };
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let reply = in_flight.join().unwrap();
        reply.assert_error(504, "plugin_timeout");
        serving.join().unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            TcpStream::connect(addr).is_err(),
            "SIG{signal}: no longer listening"
        );
        let logs = logs();
        assert!(
            logs.contains(&format!("SIG{signal} received; shutting down")),
            "SIG{signal}"
        );
        assert!(
            logs.lines().any(
                |line| line.contains("plugin instance cleaned up and stopped")
                    && line.contains(dp.as_str())
                    && line.contains(&addr.to_string())
            ),
            "SIG{signal}: data-processor was cleaned up"
        );
    }
}

fn client_for_thread() -> Client {
    client()
}

#[test]
fn stopping_the_server_cleans_up_running_plugins() {
    let mut api = Api::start();
    let dp = api.ready("data-processor");
    // An unusual count, so that this server's cleanup is the one found in the log.
    let records: Vec<Value> = (0..37).map(|i| json!({"i": i})).collect();
    let reply = api.call(
        Method::POST,
        &format!("/plugins/{dp}/process"),
        Some(&api.keys.execute),
        Some(json!(records)),
    );
    assert_eq!(reply.status, 200);
    let addr = api.addr().to_string();
    api.stop();
    let logs = logs();
    assert!(
        logs.lines().any(
            |line| line.contains("plugin instance cleaned up and stopped") && line.contains(&addr)
        ),
        "the server drained its instance"
    );
    // The data-processor reports its count from `cleanup` through host logging.
    assert!(
        logs.lines()
            .any(|line| line.contains("processed 37 records") && line.contains(&dp)),
        "cleanup ran"
    );
}

#[test]
fn registration_refuses_a_manifest_that_differs_from_the_built_in_one() {
    let api = Api::start();
    let library = plugin_copy(api.dir.path(), "data-processor");
    let manifest_path = library.with_file_name("plugin.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["permissions"] = json!(["process:data", "fs:read:/"]);
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let mut body = seed_body("data-processor");
    body["entry_point"] = json!(library.display().to_string());
    body["permissions"] = json!(["process:data", "fs:read:/"]);
    let register = |body: &Value| {
        api.call(
            Method::POST,
            "/plugins/register",
            Some(&api.keys.write),
            Some(body.clone()),
        )
    };
    let reply = register(&body);
    reply.assert_error(400, "invalid_body");
    assert_eq!(reply.field(), "permissions", "{reply:?}");
    assert!(
        reply.message().contains(
            "`permissions` is [\"process:data\"] in the library but [\"process:data\",\"fs:read:/\"] in the manifest given"
        ),
        "{reply:?}"
    );

    // A description other than the built-in one is a difference too.
    manifest["permissions"] = json!(["process:data"]);
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    body["permissions"] = json!(["process:data"]);
    body["description"] = json!("Something a reviewer would like to read");
    let reply = register(&body);
    reply.assert_error(400, "invalid_body");
    assert_eq!(reply.field(), "description", "{reply:?}");
    let listed = api.call(Method::GET, "/plugins", Some(&api.keys.read), None);
    assert_eq!(listed.body["plugins"], json!([]), "nothing registered");

    body["description"] = json!(manifest["description"]);
    assert_eq!(register(&body).status, 201);
}

#[test]
fn a_process_isolated_plugin_finds_no_descriptor_of_the_server() {
    let api = Api::start();
    let id = api.ready("fixture-fd-scanner");
    assert_eq!(
        api.registry().get(&id).unwrap().review.isolation,
        Some(plugbay_host::Isolation::Process)
    );
    let process = |id: &str| {
        api.call(
            Method::POST,
            &format!("/plugins/{id}/process"),
            Some(&api.keys.execute),
            Some(json!([{}])),
        )
    };
    // The server holds the registry open for good; the worker process inherited no
    // descriptor of it (nor of anything else the server has open).
    let reply = process(&id);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        json!([]),
        "descriptors the plugin could rewrite"
    );

    // Approved for a worker thread instead, the same plugin finds the open registry:
    // the threat model says so, and this proves the scanner would see it.
    let reply = api.call(
        Method::POST,
        &format!("/plugins/{id}/review"),
        Some(&api.keys.review),
        Some(json!({"decision": "approve", "isolation": "thread"})),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["review"]["isolation"], "thread");
    let reply = process(&id);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|fd| fd["kind"] == "sqlite database"),
        "{reply:?}"
    );
}

#[test]
fn a_library_that_aborts_when_opened_is_inspected_in_a_worker_not_the_server() {
    let api = Api::start();
    // Run in the server's process, this library's initializer would abort it.
    let reply = api.call(
        Method::POST,
        "/plugins/register",
        Some(&api.keys.write),
        Some(json!({
            "name": "ctor-abort",
            "version": "0.1.0",
            "entry_point": library("fixture-ctor-abort").display().to_string(),
            "permissions": ["process:data"],
        })),
    );
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(
        reply.message().contains("SIGABRT"),
        "the inspection's worker process aborted: {reply:?}"
    );
    let health = api.call(Method::GET, "/health", None, None);
    assert_eq!(health.status, 200, "the server goes on: {health:?}");
}

#[test]
fn process_answers_502_for_plugin_output_that_is_not_what_it_claims() {
    use crate::{forged_garbage, raw_output_request, with_forged_mark};
    let api = Api::start();
    let raw = api.ready("fixture-raw-output");
    let process = |bytes: &[u8]| {
        api.raw(
            Method::POST,
            &format!("/plugins/{raw}/process"),
            Some(&api.keys.execute),
            raw_output_request(bytes).into_bytes(),
        )
    };
    for (bytes, why) in [
        (forged_garbage(), "at line 1 column"),
        (
            b"[{\"name\": \"\xff\"}]".to_vec(),
            "invalid unicode code point",
        ),
        (b"[\"\\udc00\"]".to_vec(), "surrogate in hex escape"),
        (Vec::new(), "no bytes"),
    ] {
        let reply = process(&bytes);
        reply.assert_error(502, "invalid_plugin_output");
        assert!(
            reply
                .message()
                .starts_with("plugin raw-output@0.1.0 returned invalid output from process: "),
            "{reply:?}"
        );
        assert!(reply.message().contains(why), "{reply:?}");
    }
    // A mark claiming no records after two: the two records are the answer.
    let reply = process(&with_forged_mark(b"[{\"a\": 1}, {\"a\": 2}]", 0));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, json!([{"a": 1}, {"a": 2}]));
}

// ---------------------------------------------------------------------------------
// The HTTP layer: malformed, slow, idle and too many connections, and shutdown
// ---------------------------------------------------------------------------------

/// A response read from a raw connection: status, head, JSON body.
#[derive(Debug)]
struct RawReply {
    status: u16,
    head: String,
    body: Value,
}

impl RawReply {
    /// An error as the API promises: JSON, with this status and code.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{self:?}"
        );
        assert_eq!(self.body["error"]["code"], code, "{self:?}");
        assert!(
            !self.body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "{self:?}"
        );
    }
}

/// Reads one response (with a `Content-Length` body) from a keep-alive connection.
fn read_reply(stream: &mut TcpStream) -> RawReply {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => bytes.push(byte[0]),
            other => panic!(
                "the connection ended before a whole head ({other:?}): {}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
    let head = String::from_utf8_lossy(&bytes).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    RawReply {
        status: head.split(' ').nth(1).unwrap().parse().unwrap(),
        head,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }
}

/// Sends `request` on a new connection and reads the one answer it gets.
fn raw_reply(addr: SocketAddr, request: &[u8]) -> RawReply {
    let (status, head, body) = raw_http(addr, request);
    RawReply { status, head, body }
}

/// Whether the server has closed `stream` (the next read sees the end), waiting at
/// most `within`; bytes sent before the end are returned.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => Some(bytes),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => Some(bytes),
        Err(_) => None,
    }
}

#[test]
fn every_error_of_the_http_layer_is_json() {
    let api = Api::start();
    let addr = api.addr();
    // A garbage request line, binary garbage (a TLS hello on the plain port), a
    // header that does not parse.
    raw_reply(addr, b"HELLO\r\n\r\n").assert_error(400, "bad_request");
    raw_reply(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .assert_error(400, "bad_request");
    raw_reply(addr, b"GET /health HTTP/1.1\r\nNo-Colon-Line\r\n\r\n")
        .assert_error(400, "bad_request");
    raw_reply(
        addr,
        b"POST /plugins/register HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    )
    .assert_error(400, "bad_request");
    raw_reply(
        addr,
        b"POST /plugins/register HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    )
    .assert_error(400, "bad_request");
    raw_reply(addr, b"GET /health HTTP/2.0\r\n\r\n")
        .assert_error(505, "http_version_not_supported");
    // 414 and 431, with the client still sending when the answer comes.
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20_000));
    let reply = raw_reply(addr, long.as_bytes());
    reply.assert_error(414, "uri_too_long");
    assert!(reply
        .head
        .to_ascii_lowercase()
        .contains("connection: close"));
    let big = format!(
        "GET /health HTTP/1.1\r\nX-Long: {}\r\n\r\n",
        "b".repeat(70_000)
    );
    raw_reply(addr, big.as_bytes()).assert_error(431, "headers_too_large");
    let many = format!("GET /health HTTP/1.1\r\n{}\r\n", "X-A: a\r\n".repeat(101));
    raw_reply(addr, many.as_bytes()).assert_error(431, "headers_too_large");
    // A HEAD request refused gets the head alone.
    let (status, head, body) = raw_http(addr, b"HEAD /health HTTP/1.1\r\nBad Header: x\r\n\r\n");
    assert_eq!(status, 400, "{head}");
    assert_eq!(body, Value::Null);

    // Keep-alive: requests with bodies (by length and in chunks) are framed, so the
    // next request on the connection is read where it starts, and a malformed one
    // after good ones is answered after them, in order.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let key = &api.keys.all;
    let chunked = format!(
        "POST /plugins/register HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[1, \r\n2;ext=x\r\n2]\r\n0\r\nX-Trailer: y\r\n\r\n"
    );
    let sized = format!(
        "POST /plugins/register HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let pipelined = format!(
        "{chunked}GET /health HTTP/1.1\r\nHost: x\r\n\r\n{sized}GET /health HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP\r\n\r\n"
    );
    stream.write_all(pipelined.as_bytes()).unwrap();
    let first = read_reply(&mut stream);
    first.assert_error(400, "invalid_body");
    assert!(
        first.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must be a JSON object, not an array"),
        "{first:?}"
    );
    assert_eq!(read_reply(&mut stream).status, 200);
    let third = read_reply(&mut stream);
    third.assert_error(400, "invalid_body");
    assert_eq!(third.body["error"]["field"], "name", "{third:?}");
    assert_eq!(read_reply(&mut stream).status, 200);
    read_reply(&mut stream).assert_error(400, "bad_request");
    assert_eq!(
        closed_within(&mut stream, Duration::from_secs(5)),
        Some(Vec::new()),
        "the connection closes after the malformed request"
    );
}

#[test]
fn slow_and_idle_clients_are_timed_out_but_slow_plugins_are_not() {
    let api = Api::start_with(|options| {
        options.header_timeout = Duration::from_millis(800);
        options.idle_timeout = Duration::from_millis(800);
    });
    let addr = api.addr();
    // A head sent one byte at a time: 408 once the header timeout has passed.
    let mut slow = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    let mut answered = None;
    for byte in b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
        if slow.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        slow.set_nonblocking(true).unwrap();
        let mut peek = [0u8; 1];
        let ready = slow.peek(&mut peek).map(|n| n > 0).unwrap_or(false);
        slow.set_nonblocking(false).unwrap();
        if ready {
            answered = Some(started.elapsed());
            break;
        }
    }
    let waited = answered.expect("the slow head was answered before it was complete");
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let reply = read_reply(&mut slow);
    reply.assert_error(408, "header_timeout");
    assert!(closed_within(&mut slow, Duration::from_secs(5)).is_some());

    // A connection that sends nothing is closed, without an answer.
    let mut idle = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    assert_eq!(
        closed_within(&mut idle, Duration::from_secs(5)),
        Some(Vec::new())
    );
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    // So is one idle after a request; and a request that takes longer than the idle
    // timeout (a slow plugin) keeps its connection.
    let faulty = api.ready("fixture-faulty");
    configure(&api, &faulty, json!({"slow": "process", "ms": 1800}));
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = |path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
            api.keys.all,
            body.len()
        )
    };
    kept.write_all(request(&format!("/plugins/{faulty}/process"), "[{\"a\": 1}]").as_bytes())
        .unwrap();
    let reply = read_reply(&mut kept);
    assert_eq!(reply.status, 200, "{reply:?}");
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut kept).status, 200);
    let started = Instant::now();
    assert_eq!(
        closed_within(&mut kept, Duration::from_secs(5)),
        Some(Vec::new())
    );
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn connections_past_the_limit_get_503_and_the_server_keeps_serving() {
    let api = Api::start_with(|options| options.max_connections = 8);
    let addr = api.addr();
    let mut held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Each held connection has been accepted once it answers.
    for stream in &mut held {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_reply(stream).status, 200);
    }
    for _ in 0..20 {
        let reply = raw_reply(addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        reply.assert_error(503, "too_many_connections");
        assert!(
            reply.head.to_ascii_lowercase().contains("retry-after: 1"),
            "{reply:?}"
        );
    }
    // One ends: the next connection is served.
    drop(held.pop());
    let started = Instant::now();
    loop {
        let (status, _, _) = raw_http(
            addr,
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no slot freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The held connections still work.
    for stream in &mut held {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_reply(stream).status, 200);
    }
}

#[test]
fn a_shutdown_does_not_wait_for_half_sent_or_idle_requests() {
    let mut api = Api::start();
    let addr = api.addr();
    let faulty = api.ready("fixture-faulty");
    configure(&api, &faulty, json!({"slow": "process", "ms": 1500}));
    // Defaults: a 10 s header timeout and a 30 s idle timeout, which a shutdown
    // must not wait for.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: loc")
        .unwrap();
    let mut idle = TcpStream::connect(addr).unwrap();
    let (base, key, id) = (api.base.clone(), api.keys.all.clone(), faulty.clone());
    let in_flight = std::thread::spawn(move || {
        call(
            &client(),
            &base,
            Method::POST,
            &format!("/plugins/{id}/process"),
            Some(&key),
            Some(b"[{\"a\": 1}]".to_vec()),
        )
    });
    std::thread::sleep(Duration::from_millis(400));
    let started = Instant::now();
    api.stop();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the shutdown took {took:?}");
    // The request in flight was answered.
    assert_eq!(in_flight.join().unwrap().status, 200);
    // The half-sent head was told why its connection closed; the idle one closed.
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let reply = read_reply(&mut half);
    reply.assert_error(503, "shutting_down");
    assert_eq!(
        closed_within(&mut idle, Duration::from_secs(1)),
        Some(Vec::new())
    );
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
}

#[test]
fn ids_versions_bodies_and_entry_points_get_the_error_they_deserve() {
    let api = Api::start();
    let key = Some(api.keys.all.as_str());
    let doc = api.call(Method::GET, "/openapi.json", key, None).body;
    let pattern = doc["paths"]["/plugins/{id}"]["get"]["parameters"][0]["schema"]["pattern"]
        .as_str()
        .unwrap();
    let pattern = regex::Regex::new(pattern).unwrap();
    // What the OpenAPI pattern allows, the server reads (404: not registered); what
    // it does not, the server refuses (400).
    for (id, valid) in [
        ("data-processor@1.0.0", true),
        ("x@18446744073709551615.0.0", true),
        ("x@1.18446744073709551615.0-rc.99999999999999999999", true),
        ("a1-b2@0.0.0+build.7", true),
        ("x@18446744073709551616.0.0", false),
        ("x@1.0.99999999999999999999", false),
        ("Data-Processor@1.0.0", false),
        ("-x@1.0.0", false),
        ("x-@1.0.0", false),
        ("data_processor@1.0.0", false),
        (&format!("{}@1.0.0", "a".repeat(65)), false),
        ("x@01.0.0", false),
        ("x@1.0", false),
        // A name alone names its one registered version, or the enabled one.
        ("x", true),
        ("X", false),
    ] {
        assert_eq!(pattern.is_match(id), valid, "the pattern on {id}");
        let reply = api.call(Method::GET, &format!("/plugins/{id}"), key, None);
        if valid {
            reply.assert_error(404, "not_found");
        } else {
            reply.assert_error(400, "invalid_id");
            assert!(
                reply
                    .message()
                    .contains(&format!("invalid plugin id `{id}`: ")),
                "{reply:?}"
            );
        }
    }
    let reply = api.call(Method::GET, "/plugins/Data@1.0.0", key, None);
    assert!(
        reply
            .message()
            .contains("the name `Data` contains `D`; use only `a-z`, `0-9` and `-`"),
        "{reply:?}"
    );
    let reply = api.call(
        Method::GET,
        "/plugins/x@18446744073709551616.0.0",
        key,
        None,
    );
    assert!(reply.message().contains("exceeds u64::MAX"), "{reply:?}");

    // A review body that is JSON but not an object says so.
    let dp = {
        let reply = api.call(
            Method::POST,
            "/plugins/register",
            key,
            Some(seed_body("data-processor")),
        );
        reply.body["id"].as_str().unwrap().to_owned()
    };
    for (body, found) in [
        ("[1]", "an array"),
        ("\"approve\"", "a string"),
        ("7", "a number"),
    ] {
        let reply = api.raw(
            Method::POST,
            &format!("/plugins/{dp}/review"),
            key,
            body.as_bytes().to_vec(),
        );
        reply.assert_error(400, "invalid_body");
        assert_eq!(
            reply.message(),
            format!("request body must be a JSON object, not {found}")
        );
    }
    // An entry point that is not a regular file is never read (`/dev/zero` has no end).
    for (entry_point, kind) in [("/dev/zero", "a character device"), ("/tmp", "a folder")] {
        let mut body = seed_body("data-processor");
        body["entry_point"] = json!(entry_point);
        body["version"] = json!("1.0.0");
        let reply = api.call(Method::POST, "/plugins/register", key, Some(body));
        reply.assert_error(400, "invalid_body");
        assert_eq!(reply.field(), "entry_point");
        assert_eq!(
            reply.message(),
            format!("`entry_point` {entry_point} is {kind}, not a library file; give the plugin's library file")
        );
    }
}
