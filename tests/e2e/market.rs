//! The marketplace against a real OCI registry (the CNCF distribution registry, from
//! Debian's `docker-registry` package, on a loopback port with a temporary storage
//! folder): signed reviews checked by `ssh-keygen` itself, publish from one home and
//! install into another, a multi-platform artifact, and an attacker with write access
//! to the registry (a tampered blob, a rewritten attestation, a moved tag, a key
//! nobody trusts). Registration by URL against a real HTTP server on loopback.
//!
//! The registry tests skip, saying so, where `docker-registry` is not installed
//! (`.ci/run` installs it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugbay_host::market::{self, DownloadLimits};
use plugbay_host::registry::{Registry, Scope};
use plugbay_host::server::{ServeOptions, Server};
use plugbay_tests::{example_manifest, fixture_manifest, library, plugbay_bin, workspace_root};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------

/// A distribution registry serving on a loopback port from a temporary folder.
pub(crate) struct Distribution {
    child: Child,
    addr: String,
    storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Distribution {
    /// Starts one, or says why the test skips.
    pub(crate) fn start() -> Option<Distribution> {
        Distribution::start_with(None)
    }

    /// Starts one that wants `(user, password)` for every request (htpasswd, basic
    /// authentication), or any client if `None`.
    pub(crate) fn start_with(credentials: Option<(&str, &str)>) -> Option<Distribution> {
        let Some(program) = ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
        else {
            eprintln!("skipped: docker-registry (the CNCF distribution registry) is not installed; `apt-get install docker-registry`, as .ci/run does");
            return None;
        };
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let storage = dir.path().join("storage");
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            let mut text = format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                storage.display()
            );
            if let Some((user, password)) = credentials {
                let htpasswd = dir.path().join("htpasswd");
                let hash = bcrypt::hash(password, 4).unwrap();
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
                text.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: plugbay-tests\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            std::fs::write(&config, text).unwrap();
            let mut child = Command::new(&program)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Some(status) = child.try_wait().unwrap() {
                    eprintln!(
                        "docker-registry on {addr} exited at start ({status}); trying another port"
                    );
                    break;
                }
                let up = if credentials.is_some() { 401 } else { 200 };
                if http_status(&format!("http://{addr}/v2/")) == Some(up) {
                    return Some(Distribution {
                        child,
                        addr,
                        storage,
                        _dir: dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("docker-registry is installed but did not start on a loopback port");
    }

    /// `oci://ADDR/PATH`.
    pub(crate) fn oci(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.addr)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/v2/{path}", self.addr)
    }

    /// The file that holds a blob in the registry's storage.
    pub(crate) fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn http_status(url: &str) -> Option<u16> {
    http().get(url).send().ok().map(|r| r.status().as_u16())
}

/// What an attacker with write access to the registry does, with a plain HTTP
/// client and the distribution API: read and write manifests and blobs.
struct Attacker<'a> {
    registry: &'a Distribution,
    repository: String,
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

impl Attacker<'_> {
    fn manifest(&self, reference: &str) -> Value {
        let response = http()
            .get(
                self.registry
                    .url(&format!("{}/manifests/{reference}", self.repository)),
            )
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
        response.json().unwrap()
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        let response = http()
            .get(
                self.registry
                    .url(&format!("{}/blobs/{digest}", self.repository)),
            )
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
        response.bytes().unwrap().to_vec()
    }

    /// Uploads a blob; returns its descriptor fields (digest, size).
    fn push_blob(&self, bytes: &[u8]) -> (String, usize) {
        let digest = format!("sha256:{}", sha256(bytes));
        let start = http()
            .post(
                self.registry
                    .url(&format!("{}/blobs/uploads/", self.repository)),
            )
            .send()
            .unwrap();
        assert_eq!(start.status().as_u16(), 202, "{start:?}");
        let location = start.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", self.registry.addr)
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let done = http()
            .put(format!("{location}{separator}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .unwrap();
        assert_eq!(done.status().as_u16(), 201, "{done:?}");
        (digest, bytes.len())
    }

    fn push_manifest(&self, reference: &str, manifest: &Value) -> String {
        let bytes = serde_json::to_vec(manifest).unwrap();
        let media_type = manifest["mediaType"]
            .as_str()
            .unwrap_or(OCI_MANIFEST)
            .to_owned();
        let response = http()
            .put(
                self.registry
                    .url(&format!("{}/manifests/{reference}", self.repository)),
            )
            .header("content-type", media_type)
            .body(bytes.clone())
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "{response:?}");
        format!("sha256:{}", sha256(&bytes))
    }

    /// The index of the layer with `media_type` in an image manifest.
    fn layer(manifest: &Value, media_type: &str) -> usize {
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .position(|layer| layer["mediaType"] == media_type)
            .unwrap_or_else(|| panic!("no {media_type} layer in {manifest}"))
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A registry home of its own, driven through the `plugbay` binary.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        plugbay_tests::plugins_dir();
        plugbay_bin();
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The Docker config folder the commands read (`$DOCKER_CONFIG`).
    fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    fn output(&self, args: &[&str]) -> Output {
        self.output_with(args, None)
    }

    fn output_with(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let docker = self.docker_config();
        std::fs::create_dir_all(&docker).unwrap();
        let mut child = Command::new(plugbay_bin())
            .arg("--home")
            .arg(self.path())
            .args(args)
            .current_dir(workspace_root())
            .env("USER", "operator")
            .env("DOCKER_CONFIG", &docker)
            .env_remove("PLUGBAY_HOME")
            .env_remove("PLUGBAY_SIGNING_KEY")
            .env_remove("PLUGBAY_MARKETPLACE")
            .env_remove("RUST_LOG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "plugbay {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Runs a command that must fail with exit code 1; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "plugbay {args:?} should fail:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stderr).unwrap()
    }

    fn registry(&self) -> Registry {
        Registry::open(self.path()).unwrap()
    }

    /// Registers an example or fixture plugin from the build.
    fn register(&self, package: &str) -> String {
        let manifest = match package.strip_prefix("fixture-") {
            Some(name) => fixture_manifest(name),
            None => example_manifest(package),
        };
        let entry = self.json(&[
            "register",
            &manifest.display().to_string(),
            "--library",
            &library(package).display().to_string(),
        ]);
        entry["id"].as_str().unwrap().to_owned()
    }

    /// Nothing of a refused install was kept: no plugin, no stored library, no
    /// temporary download.
    fn assert_nothing_stored(&self) {
        assert!(self.registry().list().unwrap().is_empty());
        let libraries = self.path().join("libraries");
        let stored: Vec<_> = std::fs::read_dir(&libraries)
            .map(|dir| dir.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            stored
                .iter()
                .all(|name| name.to_string_lossy().starts_with(".incoming")),
            "{stored:?}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(self.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".incoming"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(
            !self.path().join("plugins").exists(),
            "no plugin folder was made"
        );
    }
}

/// A reviewer's Ed25519 key pair, made by `ssh-keygen`; returns (private, public).
pub(crate) fn reviewer_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("{name}@review"))
        .arg("-f")
        .arg(&key)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    (key.clone(), key.with_extension("pub"))
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

/// Home A registers, approves with alice's key (granting `process:data`, on a worker
/// thread) and publishes data-processor; returns the reference it published.
fn publish_data_processor(registry: &Distribution, keys: &Path) -> (Home, String) {
    let home = Home::new();
    let (alice, _) = reviewer_key(keys, "alice");
    let id = home.register("data-processor");
    home.ok(&[
        "review",
        "approve",
        &id,
        "--reviewer",
        "alice",
        "--isolation",
        "thread",
        "--signing-key",
        &path(&alice),
    ]);
    let published = home.json(&["publish", &id, &registry.oci("team/data-processor")]);
    assert_eq!(
        published["reference"],
        registry.oci("team/data-processor:1.0.0"),
        "{published}"
    );
    (home, registry.oci("team/data-processor:1.0.0"))
}

// ---------------------------------------------------------------------------------
// Signed reviews
// ---------------------------------------------------------------------------------

#[test]
fn a_signed_review_is_verified_by_ssh_keygen_itself() {
    let keys = tempfile::tempdir().unwrap();
    let (alice, alice_pub) = reviewer_key(keys.path(), "alice");
    let home = Home::new();
    let id = home.register("redactor");
    let approved = home.json(&[
        "review",
        "approve",
        &id,
        "--reviewer",
        "alice@example.com",
        "--signing-key",
        &path(&alice),
    ]);
    let attestation = &approved["attestation"];
    assert_eq!(attestation["plugin"], id);
    assert_eq!(attestation["reviewer"], "alice@example.com");
    assert_eq!(attestation["isolation"], "process");
    assert_eq!(
        attestation["granted"],
        approved["plugin"]["review"]["granted"]
    );
    assert_eq!(attestation["manifest"], approved["plugin"]["manifest"]);
    assert_eq!(
        attestation["libraries"][0]["sha256"],
        approved["plugin"]["review"]["reviewed_sha256"]
    );
    assert_eq!(attestation["libraries"][0]["platform"], "linux/amd64");
    home.ok(&["trust", "add", "alice@example.com", &path(&alice_pub)]);
    let out = tempfile::tempdir().unwrap();
    let written = home.json(&["attestation", &id, "--output", &path(out.path())]);
    let command = written["verify"].as_str().unwrap();
    assert!(
        command.starts_with("ssh-keygen -Y verify -f ")
            && command.contains("-I alice@example.com -n plugbay-review"),
        "{command}"
    );
    // The documented one-liner, run by the shell as an operator would.
    let verified = Command::new("sh").arg("-c").arg(command).output().unwrap();
    let said = String::from_utf8_lossy(&verified.stdout).into_owned()
        + &String::from_utf8_lossy(&verified.stderr);
    assert!(verified.status.success(), "{said}");
    assert!(
        said.contains("Good \"plugbay-review\" signature for alice@example.com"),
        "{said}"
    );
    // One changed byte in the statement, and OpenSSH refuses it too.
    let statement = out.path().join("attestation.json");
    let text = std::fs::read_to_string(&statement).unwrap();
    std::fs::write(&statement, text.replace("\"process\"", "\"thread\"")).unwrap();
    let refused = Command::new("sh").arg("-c").arg(command).output().unwrap();
    assert!(!refused.status.success());
    // A signature for another namespace (a git commit's) is not a review.
    let git = Command::new("sh")
        .arg("-c")
        .arg(command.replace("-n plugbay-review", "-n git"))
        .output()
        .unwrap();
    assert!(!git.status.success());
}

#[test]
fn trust_keys_are_added_listed_and_removed() {
    let keys = tempfile::tempdir().unwrap();
    let (_, alice_pub) = reviewer_key(keys.path(), "alice");
    let home = Home::new();
    let listed = home.ok(&["trust", "list"]);
    assert!(listed.contains("no trusted reviewer keys"), "{listed}");
    let added = home.json(&["trust", "add", "alice", &path(&alice_pub)]);
    let fingerprint = added["fingerprint"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(home.path().join("allowed_signers")).unwrap();
    assert!(
        text.starts_with("alice namespaces=\"plugbay-review\" ssh-ed25519 "),
        "{text}"
    );
    let listed = home.ok(&["trust", "list"]);
    assert!(
        listed.contains("alice") && listed.contains(&fingerprint),
        "{listed}"
    );
    let err = home.fails(&["trust", "add", "alice", &path(&alice_pub)]);
    assert!(err.contains("already trusted"), "{err}");
    let err = home.fails(&["trust", "add", "two words", &path(&alice_pub)]);
    assert!(err.contains("invalid reviewer name"), "{err}");
    let err = home.fails(&["trust", "add", "bob", "/nonexistent/bob.pub"]);
    assert!(err.contains("/nonexistent/bob.pub"), "{err}");
    home.ok(&["trust", "remove", &fingerprint]);
    assert!(home.json(&["trust", "list"]).as_array().unwrap().is_empty());
    let err = home.fails(&["trust", "remove", "alice"]);
    assert!(
        err.contains("no trusted reviewer key matches `alice`"),
        "{err}"
    );
}

#[test]
fn a_signing_key_that_is_not_ed25519_or_not_a_key_is_refused_with_what_to_do() {
    let keys = tempfile::tempdir().unwrap();
    let rsa = keys.path().join("rsa");
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
        .arg(&rsa)
        .status()
        .unwrap()
        .success());
    let home = Home::new();
    let id = home.register("redactor");
    let err = home.fails(&["review", "approve", &id, "--signing-key", &path(&rsa)]);
    assert!(
        err.contains("Ed25519 keys only") && err.contains("ssh-keygen -t ed25519"),
        "{err}"
    );
    let err = home.fails(&[
        "review",
        "approve",
        &id,
        "--signing-key",
        "/nonexistent/key",
    ]);
    assert!(err.contains("/nonexistent/key"), "{err}");
    // Nothing was approved by the failed attempts.
    assert_eq!(
        home.registry().get(&id).unwrap().review.status.to_string(),
        "pending"
    );
}

// ---------------------------------------------------------------------------------
// Publish and install, against the registry
// ---------------------------------------------------------------------------------

#[test]
fn a_plugin_published_from_one_home_installs_approved_in_another() {
    let Some(registry) = Distribution::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (_reviewers_home, reference) = publish_data_processor(&registry, keys.path());
    let alice_pub = keys.path().join("alice.pub");

    // No trusted key: registered, pending a local review.
    let other = Home::new();
    let installed = other.json(&["install", &reference]);
    assert_eq!(installed["outcome"]["status"], "pending", "{installed}");
    assert!(
        installed["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("plugbay trust add alice"),
        "{installed}"
    );
    assert_eq!(installed["review"]["status"], "pending");
    assert_eq!(installed["source"], reference);
    other.ok(&["unregister", "data-processor@1.0.0"]);

    // Alice trusted: approved as she attested, on a worker thread.
    other.ok(&["trust", "add", "alice", &path(&alice_pub)]);
    let installed = other.json(&["install", &reference]);
    assert_eq!(installed["outcome"]["status"], "approved", "{installed}");
    assert_eq!(installed["review"]["status"], "approved");
    assert_eq!(installed["review"]["reviewer"], "alice");
    assert_eq!(installed["review"]["granted"], json!(["process:data"]));
    assert_eq!(installed["review"]["isolation"], "thread");
    assert_eq!(installed["enabled"], false);
    assert_eq!(installed["platforms"], json!(["linux/amd64"]));
    assert_eq!(
        installed["sha256"],
        plugbay_host::sha256_file(&library("data-processor")).unwrap()
    );
    // It runs once enabled.
    other.ok(&["enable", "data-processor@1.0.0"]);
    let input = other.dir.path().join("in.json");
    std::fs::write(&input, r#"[{"id": 1}]"#).unwrap();
    let ran = other.ok(&["run", "data-processor@1.0.0", "--input", &path(&input)]);
    assert!(
        ran.contains("\"processed\":true") || ran.contains("\"processed\": true"),
        "{ran}"
    );
    // Its attestation travelled with it: ssh-keygen checks it in the new home.
    let out = tempfile::tempdir().unwrap();
    let written = other.json(&[
        "attestation",
        "data-processor@1.0.0",
        "--output",
        &path(out.path()),
    ]);
    let verified = Command::new("sh")
        .arg("-c")
        .arg(written["verify"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(verified.status.success(), "{verified:?}");
    // The history says where it came from and who approved it.
    let shown = other.json(&["show", "data-processor@1.0.0"]);
    let install = shown["audit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["action"] == "install")
        .unwrap()
        .clone();
    assert!(
        install["detail"].as_str().unwrap().contains(&reference)
            && install["detail"]
                .as_str()
                .unwrap()
                .contains("reviewer alice"),
        "{install}"
    );

    // The marketplace lists it, with who approved it.
    let offers = other.json(&["search", &registry.oci("team")]);
    assert_eq!(offers.as_array().unwrap().len(), 1, "{offers}");
    assert_eq!(offers[0]["name"], "data-processor");
    assert_eq!(offers[0]["version"], "1.0.0");
    assert_eq!(offers[0]["platforms"], json!(["linux/amd64"]));
    assert_eq!(offers[0]["reviewer"], "alice");
    assert_eq!(offers[0]["trust"]["status"], "trusted");
    let table = other.ok(&["search", &registry.oci("team")]);
    assert!(
        table.contains("APPROVED BY") && table.contains("alice"),
        "{table}"
    );

    // `NAME@VERSION` in the default marketplace; already installed here.
    let err = other.fails(&[
        "install",
        "data-processor@1.0.0",
        "--marketplace",
        &registry.oci("team"),
    ]);
    assert!(err.contains("already registered"), "{err}");
    let err = other.fails(&["install", "data-processor@1.0.0"]);
    assert!(err.contains("PLUGBAY_MARKETPLACE"), "{err}");
}

#[test]
fn only_an_approved_and_signed_plugin_can_be_published() {
    let Some(registry) = Distribution::start() else {
        return;
    };
    let home = Home::new();
    let id = home.register("redactor");
    let target = registry.oci("team/redactor");
    let err = home.fails(&["publish", &id, &target]);
    assert!(
        err.contains("it is pending; only approved plugins are published"),
        "{err}"
    );
    home.ok(&["review", "approve", &id]);
    let err = home.fails(&["publish", &id, &target]);
    assert!(err.contains("its approval is not signed"), "{err}");
    home.ok(&["review", "reject", &id, "--reason", "changed my mind"]);
    let err = home.fails(&["publish", &id, &target]);
    assert!(err.contains("it is rejected"), "{err}");
    // A repository named after another plugin is refused before anything is pushed.
    let keys = tempfile::tempdir().unwrap();
    let (key, _) = reviewer_key(keys.path(), "alice");
    home.ok(&["review", "approve", &id, "--signing-key", &path(&key)]);
    let err = home.fails(&["publish", &id, &registry.oci("team/other")]);
    assert!(
        err.contains("ends in `other`, but the plugin is `redactor`"),
        "{err}"
    );
    assert_eq!(
        http_status(&registry.url("team/other/tags/list")),
        Some(404)
    );
    assert_eq!(
        http_status(&registry.url("team/redactor/tags/list")),
        Some(404)
    );
    // A later unsigned approval makes the signed one stale.
    home.ok(&["review", "approve", &id, "--grant", "process:data"]);
    let err = home.fails(&["publish", &id, &target]);
    assert!(err.contains("not signed"), "{err}");
}

#[test]
fn a_tampered_blob_is_refused_and_nothing_is_stored() {
    let Some(registry) = Distribution::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (_reviewers_home, reference) = publish_data_processor(&registry, keys.path());
    let attacker = Attacker {
        registry: &registry,
        repository: "team/data-processor".to_owned(),
    };
    let manifest = attacker.manifest("1.0.0");
    let library = &manifest["layers"]
        [Attacker::layer(&manifest, "application/vnd.plugbay.plugin.library.v1")];
    // The registry's disk is changed under it: same digest, other bytes.
    let file = registry.blob_file(library["digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let other = Home::new();
    other.ok(&[
        "trust",
        "add",
        "alice",
        &path(&keys.path().join("alice.pub")),
    ]);
    let err = other.fails(&["install", &reference]);
    assert!(
        err.contains("its library has digest") && err.contains("nothing was stored"),
        "{err}"
    );
    other.assert_nothing_stored();
}

#[test]
fn a_rewritten_attestation_does_not_verify_and_is_refused() {
    let Some(registry) = Distribution::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (_reviewers_home, reference) = publish_data_processor(&registry, keys.path());
    let attacker = Attacker {
        registry: &registry,
        repository: "team/data-processor".to_owned(),
    };
    // The attacker grants the plugin more than alice did, and fixes every digest.
    let mut manifest = attacker.manifest("1.0.0");
    let index = Attacker::layer(&manifest, "application/vnd.plugbay.attestation.v1+json");
    let statement = attacker.blob(manifest["layers"][index]["digest"].as_str().unwrap());
    let forged = String::from_utf8(statement)
        .unwrap()
        .replace("\"isolation\": \"thread\"", "\"isolation\": \"process\"");
    let (digest, size) = attacker.push_blob(forged.as_bytes());
    manifest["layers"][index]["digest"] = json!(digest);
    manifest["layers"][index]["size"] = json!(size);
    attacker.push_manifest("1.0.0", &manifest);

    let other = Home::new();
    other.ok(&[
        "trust",
        "add",
        "alice",
        &path(&keys.path().join("alice.pub")),
    ]);
    let err = other.fails(&["install", &reference]);
    assert!(
        err.contains("signature does not verify") && err.contains("nothing was stored"),
        "{err}"
    );
    other.assert_nothing_stored();
    // Nobody's trust makes it better: without trusted keys it is refused the same.
    let third = Home::new();
    let err = third.fails(&["install", &reference]);
    assert!(err.contains("signature does not verify"), "{err}");
    third.assert_nothing_stored();
    let offers = third.json(&["search", &registry.oci("team")]);
    assert_eq!(offers[0]["trust"]["status"], "invalid", "{offers}");
}

#[test]
fn a_tag_moved_to_another_library_after_signing_is_refused() {
    let Some(registry) = Distribution::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (reviewers, reference) = publish_data_processor(&registry, keys.path());
    let attacker = Attacker {
        registry: &registry,
        repository: "team/data-processor".to_owned(),
    };
    let signed = attacker.manifest("1.0.0");
    // Another library (a loadable plugin that embeds the same manifest would do as
    // well) under the same manifest, attestation and signature: every digest in the
    // new manifest is right, the tag moves to it.
    let mut moved = signed.clone();
    let index = Attacker::layer(&moved, "application/vnd.plugbay.plugin.library.v1");
    let mut bytes = std::fs::read(library("data-processor")).unwrap();
    bytes.extend_from_slice(b"appended after the review");
    let (digest, size) = attacker.push_blob(&bytes);
    moved["layers"][index]["digest"] = json!(digest);
    moved["layers"][index]["size"] = json!(size);
    let moved_digest = attacker.push_manifest("1.0.0", &moved);

    let other = Home::new();
    other.ok(&[
        "trust",
        "add",
        "alice",
        &path(&keys.path().join("alice.pub")),
    ]);
    let err = other.fails(&["install", &reference]);
    assert!(
        err.contains("but reviewer `alice` attested") && err.contains("nothing was stored"),
        "{err}"
    );
    other.assert_nothing_stored();
    // The same refusal when the moved artifact is pinned by its digest.
    let pinned = format!("{}@{moved_digest}", registry.oci("team/data-processor"));
    let err = other.fails(&["install", &pinned]);
    assert!(err.contains("but reviewer `alice` attested"), "{err}");

    // A tag moved to another signed version of the plugin is refused too: the tag
    // names a version, and the artifact must be that version.
    let mut retagged = signed.clone();
    retagged["annotations"]["org.opencontainers.image.version"] = json!("1.0.0");
    attacker.push_manifest("2.0.0", &retagged);
    let err = other.fails(&["install", &registry.oci("team/data-processor:2.0.0")]);
    assert!(err.contains("tag `2.0.0` names version 1.0.0"), "{err}");
    other.assert_nothing_stored();

    // Publishing the real plugin again does not silently move the tag back.
    let err = reviewers.fails(&[
        "publish",
        "data-processor@1.0.0",
        &registry.oci("team/data-processor"),
    ]);
    assert!(
        err.contains("already names another artifact") && err.contains("--force"),
        "{err}"
    );
    reviewers.ok(&[
        "publish",
        "data-processor@1.0.0",
        &registry.oci("team/data-processor"),
        "--force",
    ]);
    assert_eq!(
        other.json(&["install", &reference])["outcome"]["status"],
        "approved"
    );
}

#[test]
fn a_review_signed_by_a_key_nobody_trusts_stays_pending() {
    let Some(registry) = Distribution::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (_, alice_pub) = reviewer_key(keys.path(), "alice");
    let (mallory, _) = reviewer_key(keys.path(), "mallory");
    // Mallory signs, claiming to be alice.
    let home = Home::new();
    let id = home.register("data-processor");
    home.ok(&[
        "review",
        "approve",
        &id,
        "--reviewer",
        "alice",
        "--signing-key",
        &path(&mallory),
    ]);
    home.ok(&["publish", &id, &registry.oci("team/data-processor")]);

    let other = Home::new();
    other.ok(&["trust", "add", "alice", &path(&alice_pub)]);
    let installed = other.json(&["install", &registry.oci("team/data-processor:1.0.0")]);
    assert_eq!(installed["outcome"]["status"], "pending", "{installed}");
    assert_eq!(installed["review"]["status"], "pending");
    assert!(
        installed["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("is not among the trusted reviewer keys"),
        "{installed}"
    );
    let err = other.fails(&["enable", &id]);
    assert!(err.contains("pending"), "{err}");
    // Trusted under another name than the statement gives: still pending.
    let third = Home::new();
    third.ok(&[
        "trust",
        "add",
        "bob",
        &path(&keys.path().join("mallory.pub")),
    ]);
    let installed = third.json(&["install", &registry.oci("team/data-processor:1.0.0")]);
    assert_eq!(installed["outcome"]["status"], "pending", "{installed}");
    assert!(
        installed["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("trusted as `bob`"),
        "{installed}"
    );
}

/// The Windows library of fixture-noop: cross-built with the `x86_64-pc-windows-gnu`
/// target where its standard library and MinGW are installed, else a stand-in PE file
/// that embeds the manifest as the macro would (the test says which).
fn windows_library() -> PathBuf {
    let root = workspace_root();
    let target_dir = plugbay_tests::profile_dir().parent().unwrap().to_owned();
    // The target's standard library is installed when its folder holds `libstd-*`.
    let std_installed = Command::new("rustc")
        .args([
            "--print",
            "target-libdir",
            "--target",
            "x86_64-pc-windows-gnu",
        ])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| std::fs::read_dir(String::from_utf8_lossy(&output.stdout).trim()).ok())
        .is_some_and(|mut files| {
            files.any(|file| {
                file.is_ok_and(|file| file.file_name().to_string_lossy().starts_with("libstd-"))
            })
        });
    let mingw = Command::new("x86_64-w64-mingw32-gcc")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if std_installed && mingw {
        let status = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "build",
                "-p",
                "fixture-noop",
                "--target",
                "x86_64-pc-windows-gnu",
                "--target-dir",
            ])
            .arg(&target_dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cross-building fixture-noop for windows failed"
        );
        eprintln!("the windows library is cross-built with x86_64-pc-windows-gnu");
        return target_dir.join("x86_64-pc-windows-gnu/debug/fixture_noop.dll");
    }
    eprintln!("the x86_64-pc-windows-gnu target or MinGW is not installed: the windows library is a stand-in PE file that embeds the manifest");
    let manifest = plugbay_host::read_manifest(&fixture_manifest("noop")).unwrap();
    let dir = target_dir.join("plugbay-market-stand-in");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fixture_noop.dll");
    let mut bytes = b"MZ\x90\x00\x03\x00\x00\x00".to_vec();
    bytes.resize(512, 0);
    bytes.extend_from_slice(manifest.to_json().as_bytes());
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_multi_platform_artifact_installs_this_platforms_library() {
    let Some(registry) = Distribution::start() else {
        return;
    };
    let dll = windows_library();
    let keys = tempfile::tempdir().unwrap();
    let (alice, alice_pub) = reviewer_key(keys.path(), "alice");
    let home = Home::new();
    let id = home.register("fixture-noop");
    let windows = format!("windows/amd64={}", path(&dll));
    // A library for the wrong platform, or one built from another plugin, is refused.
    let err = home.fails(&[
        "review",
        "approve",
        &id,
        "--signing-key",
        &path(&alice),
        "--platform-library",
        &format!("windows/amd64={}", path(&library("fixture-noop"))),
    ]);
    assert!(
        err.contains("it is an ELF file (linux), not a windows library"),
        "{err}"
    );
    let err = home.fails(&[
        "review",
        "approve",
        &id,
        "--signing-key",
        &path(&alice),
        "--platform-library",
        &format!("linux/amd64={}", path(&library("fixture-noop"))),
    ]);
    assert!(err.contains("is this host's platform"), "{err}");
    let approved = home.json(&[
        "review",
        "approve",
        &id,
        "--reviewer",
        "alice",
        "--signing-key",
        &path(&alice),
        "--platform-library",
        &windows,
    ]);
    let libraries = approved["attestation"]["libraries"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(libraries.len(), 2, "{approved}");
    assert_eq!(libraries[1]["platform"], "windows/amd64");
    assert_eq!(libraries[1]["file"], "fixture_noop.dll");
    assert_eq!(
        libraries[1]["sha256"],
        plugbay_host::sha256_file(&dll).unwrap()
    );

    let target = registry.oci("team/noop");
    let err = home.fails(&["publish", &id, &target]);
    assert!(
        err.contains("no library was given for it")
            && err.contains("--platform-library windows/amd64=PATH"),
        "{err}"
    );
    let other_dll = home.dir.path().join("other.dll");
    std::fs::write(&other_dll, b"MZ not the reviewed one").unwrap();
    let err = home.fails(&[
        "publish",
        &id,
        &target,
        "--platform-library",
        &format!("windows/amd64={}", path(&other_dll)),
    ]);
    assert!(err.contains("but the attestation says"), "{err}");
    let published = home.json(&["publish", &id, &target, "--platform-library", &windows]);
    assert_eq!(
        published["platforms"],
        json!(["linux/amd64", "windows/amd64"])
    );

    // The tag names an image index with a manifest per platform.
    let attacker = Attacker {
        registry: &registry,
        repository: "team/noop".to_owned(),
    };
    let index = attacker.manifest("0.1.0");
    assert_eq!(index["mediaType"], OCI_INDEX, "{index}");
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            format!(
                "{}/{}",
                entry["platform"]["os"].as_str().unwrap(),
                entry["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "windows/amd64"]);

    let other = Home::new();
    other.ok(&["trust", "add", "alice", &path(&alice_pub)]);
    let installed = other.json(&["install", &registry.oci("team/noop:0.1.0")]);
    assert_eq!(installed["outcome"]["status"], "approved", "{installed}");
    assert_eq!(
        installed["platforms"],
        json!(["linux/amd64", "windows/amd64"])
    );
    assert_eq!(
        installed["sha256"],
        plugbay_host::sha256_file(&library("fixture-noop")).unwrap()
    );
    assert!(
        installed["library"]
            .as_str()
            .unwrap()
            .ends_with("/libfixture_noop.so"),
        "{installed}"
    );
    let offers = other.json(&["search", &registry.oci("team")]);
    assert_eq!(
        offers[0]["platforms"],
        json!(["linux/amd64", "windows/amd64"]),
        "{offers}"
    );
}

#[test]
fn registry_credentials_come_from_the_flags_or_the_docker_config_file() {
    let Some(registry) = Distribution::start_with(Some(("publisher", "s3cret"))) else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (alice, _) = reviewer_key(keys.path(), "alice");
    let home = Home::new();
    let id = home.register("redactor");
    home.ok(&["review", "approve", &id, "--signing-key", &path(&alice)]);
    let target = registry.oci("team/redactor");
    let err = home.fails(&["publish", &id, &target]);
    assert!(err.contains("401") && err.contains("docker login"), "{err}");
    let wrong = home.output_with(
        &[
            "publish",
            &id,
            &target,
            "--username",
            "publisher",
            "--password-stdin",
        ],
        Some("guess\n"),
    );
    assert_eq!(wrong.status.code(), Some(1));
    let output = home.output_with(
        &[
            "publish",
            &id,
            &target,
            "--username",
            "publisher",
            "--password-stdin",
        ],
        Some("s3cret\n"),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Another home reads the credentials `docker login` would have written.
    let other = Home::new();
    let err = other.fails(&["install", &registry.oci("team/redactor:1.0.0")]);
    assert!(err.contains("docker login"), "{err}");
    other.assert_nothing_stored();
    std::fs::create_dir_all(other.docker_config()).unwrap();
    // `publisher:s3cret` in base64, as `docker login` writes it.
    let auth = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("publisher:s3cret")
    };
    std::fs::write(
        other.docker_config().join("config.json"),
        json!({"auths": {registry.addr.clone(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let installed = other.json(&["install", &registry.oci("team/redactor:1.0.0")]);
    assert_eq!(installed["outcome"]["status"], "pending", "{installed}");
    let offers = other.json(&["search", &registry.oci("team")]);
    assert_eq!(offers[0]["name"], "redactor", "{offers}");
}

// ---------------------------------------------------------------------------------
// The REST API
// ---------------------------------------------------------------------------------

fn api_call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http()
        .request(method, format!("{base}{path}"))
        .header("authorization", format!("Bearer {key}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn serve(home: &Path) -> (plugbay_host::server::RunningServer, String) {
    let mut options = ServeOptions::new(home);
    options.addr = "127.0.0.1:0".parse().unwrap();
    options.worker_program = Some(plugbay_bin().to_owned());
    let server = Server::bind(options).unwrap().spawn().unwrap();
    let base = format!("http://{}", server.local_addr());
    (server, base)
}

#[test]
fn install_and_publish_over_the_api_need_their_scopes() {
    let Some(registry) = Distribution::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (reviewers, reference) = publish_data_processor(&registry, keys.path());
    // The reviewers' server publishes it again, under another namespace.
    let (publish_key, write_key) = {
        let mut db = reviewers.registry();
        (
            db.create_key("publisher", &[Scope::Publish], "test")
                .unwrap()
                .1,
            db.create_key("writer", &[Scope::Write, Scope::Read], "test")
                .unwrap()
                .1,
        )
    };
    let (server, base) = serve(&reviewers.path());
    let body = json!({"reference": registry.oci("mirror/data-processor")});
    let (status, reply) = api_call(
        &base,
        reqwest::Method::POST,
        "/plugins/data-processor@1.0.0/publish",
        &write_key,
        Some(body.clone()),
    );
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{reply}"
    );
    let (status, reply) = api_call(
        &base,
        reqwest::Method::POST,
        "/plugins/data-processor@1.0.0/publish",
        &publish_key,
        Some(body),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["reference"],
        registry.oci("mirror/data-processor:1.0.0")
    );
    assert_eq!(reply["reviewer"], "alice");
    let (status, reply) = api_call(
        &base,
        reqwest::Method::POST,
        "/plugins/redactor@1.0.0/publish",
        &publish_key,
        Some(json!({"reference": registry.oci("mirror/redactor")})),
    );
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{reply}"
    );
    drop(server);

    // Another server installs it.
    let other = Home::new();
    other.ok(&[
        "trust",
        "add",
        "alice",
        &path(&keys.path().join("alice.pub")),
    ]);
    let (install_key, review_key) = {
        let mut db = other.registry();
        (
            db.create_key("installer", &[Scope::Install], "test")
                .unwrap()
                .1,
            db.create_key("reviewer", &[Scope::Review, Scope::Write], "test")
                .unwrap()
                .1,
        )
    };
    let (_server, base) = serve(&other.path());
    let body = json!({"reference": reference});
    let (status, reply) = api_call(
        &base,
        reqwest::Method::POST,
        "/plugins/install",
        &review_key,
        Some(body.clone()),
    );
    assert_eq!(status, 403, "{reply}");
    let (status, reply) = api_call(
        &base,
        reqwest::Method::POST,
        "/plugins/install",
        &install_key,
        Some(json!({"reference": "data-processor@1.0.0"})),
    );
    assert_eq!(
        (status, reply["error"]["field"].as_str()),
        (400, Some("reference")),
        "{reply}"
    );
    let (status, reply) = api_call(
        &base,
        reqwest::Method::POST,
        "/plugins/install",
        &install_key,
        Some(body.clone()),
    );
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["id"], "data-processor@1.0.0");
    assert_eq!(reply["outcome"]["status"], "approved");
    assert_eq!(reply["review"]["isolation"], "thread");
    let (status, reply) = api_call(
        &base,
        reqwest::Method::POST,
        "/plugins/install",
        &install_key,
        Some(body),
    );
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (409, Some("already_registered")),
        "{reply}"
    );
    let (status, reply) = api_call(
        &base,
        reqwest::Method::POST,
        "/plugins/install",
        &install_key,
        Some(json!({"reference": registry.oci("team/nothing:1.0.0")})),
    );
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (502, Some("upstream_failed")),
        "{reply}"
    );
    // The OpenAPI document lists both routes with their scopes.
    let (_, doc) = api_call(
        &base,
        reqwest::Method::GET,
        "/openapi.json",
        &install_key,
        None,
    );
    assert_eq!(
        doc["paths"]["/plugins/install"]["post"]["security"][0]["bearer"][0],
        "plugins:install"
    );
    assert_eq!(
        doc["paths"]["/plugins/{id}/publish"]["post"]["security"][0]["bearer"][0],
        "plugins:publish"
    );
}

// ---------------------------------------------------------------------------------
// Register by URL
// ---------------------------------------------------------------------------------

/// A small HTTP file server on loopback: serves `files` by path, and a few misdeeds.
struct FileServer {
    addr: String,
}

impl FileServer {
    fn start(files: Vec<(&'static str, Vec<u8>)>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let files = Arc::new(files);
        let own = addr.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let files = files.clone();
                let own = own.clone();
                std::thread::spawn(move || serve_one(stream, &files, &own));
            }
        });
        FileServer { addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn serve_one(mut stream: TcpStream, files: &[(&str, Vec<u8>)], own: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let reply = |stream: &mut TcpStream, head: String, body: &[u8]| {
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    match path.as_str() {
        "/loop" => reply(&mut stream, format!("HTTP/1.1 302 Found\r\nLocation: http://{own}/loop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), b""),
        "/to-file" => reply(&mut stream, "HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(), b""),
        "/moved" => reply(&mut stream, format!("HTTP/1.1 301 Moved\r\nLocation: http://{own}/my-plugin/init\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), b""),
        "/huge" => reply(&mut stream, "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n".to_owned(), b"not a billion bytes"),
        "/endless" => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..1024 {
                if stream.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
        "/slow" => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nab");
            std::thread::sleep(Duration::from_secs(5));
        }
        _ => match files.iter().find(|(name, _)| *name == path) {
            Some((_, body)) => reply(&mut stream, format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()), body),
            None => reply(&mut stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(), b""),
        },
    }
    let _ = stream.flush();
    let mut rest = Vec::new();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = reader.read_to_end(&mut rest);
}

#[test]
fn the_seeds_registration_request_downloads_the_library_from_its_url() {
    let files = FileServer::start(vec![(
        "/my-plugin/init",
        std::fs::read(library("data-processor")).unwrap(),
    )]);
    let home = Home::new();
    let key = home
        .registry()
        .create_key("writer", &[Scope::Write], "test")
        .unwrap()
        .1;
    let (_server, base) = serve(&home.path());
    let entry_point = files.url("/my-plugin/init");
    // The seed's request, as written, with its entry point on this machine.
    let (status, entry) = api_call(
        &base,
        reqwest::Method::POST,
        "/plugins/register",
        &key,
        Some(json!({
            "name": "data-processor",
            "version": "1.0.0",
            "description": "A plugin for processing data",
            "entry_point": entry_point,
            "permissions": ["process:data"],
        })),
    );
    assert_eq!(status, 201, "{entry}");
    assert_eq!(entry["id"], "data-processor@1.0.0");
    assert_eq!(entry["review"]["status"], "pending");
    assert_eq!(entry["source"], entry_point);
    let sha256 = plugbay_host::sha256_file(&library("data-processor")).unwrap();
    assert_eq!(entry["sha256"], sha256);
    assert!(
        entry["library"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/libraries/{sha256}/libdata_processor.so")),
        "{entry}"
    );
    // Its `${plugin_dir}` is a folder of its own in the home, with its manifest.
    let plugin_dir = PathBuf::from(entry["plugin_dir"].as_str().unwrap());
    assert_eq!(plugin_dir, home.path().join("plugins/data-processor/1.0.0"));
    assert!(plugin_dir.join("plugin.json").is_file());
    let registered = home
        .registry()
        .audit_log(Some("data-processor@1.0.0"))
        .unwrap();
    assert!(registered.iter().any(|event| event.action == "download"
        && event.detail.as_deref().unwrap_or("").contains(&entry_point)));
    // The body is still checked against the plugin it downloaded.
    let (status, reply) = api_call(
        &base,
        reqwest::Method::POST,
        "/plugins/register",
        &key,
        Some(json!({
            "name": "data-processor", "version": "1.0.0", "entry_point": files.url("/my-plugin/init"),
            "permissions": ["process:data", "read:data"],
        })),
    );
    assert_eq!(
        (status, reply["error"]["field"].as_str()),
        (400, Some("permissions")),
        "{reply}"
    );
    for (path, needle) in [
        ("/nothing-here", "404"),
        ("/loop", "redirect"),
        ("/to-file", "file"),
        ("/huge", "more than the limit"),
    ] {
        let (status, reply) = api_call(
            &base,
            reqwest::Method::POST,
            "/plugins/register",
            &key,
            Some(json!({
                "name": "redactor", "version": "1.0.0", "entry_point": files.url(path), "permissions": ["process:data"],
            })),
        );
        assert_eq!(
            (status, reply["error"]["field"].as_str()),
            (400, Some("entry_point")),
            "{path}: {reply}"
        );
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(needle),
            "{path}: {reply}"
        );
    }
    // Nothing of the refused downloads stays in the home.
    assert_eq!(home.registry().list().unwrap().len(), 1);
    assert!(std::fs::read_dir(home.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".incoming")));
}

#[test]
fn register_takes_a_url_on_the_command_line() {
    let files = FileServer::start(vec![(
        "/my-plugin/init",
        std::fs::read(library("dedup")).unwrap(),
    )]);
    let home = Home::new();
    // Through a redirect, as a download link often is.
    let entry = home.json(&["register", &files.url("/moved")]);
    assert_eq!(entry["id"], "dedup@1.0.0");
    assert_eq!(entry["review"]["status"], "pending");
    assert_eq!(entry["source"], files.url("/moved"));
    assert!(
        entry["library"].as_str().unwrap().ends_with("/libdedup.so"),
        "{entry}"
    );
    let shown = home.ok(&["show", "dedup@1.0.0"]);
    assert!(
        shown.contains(&files.url("/my-plugin/init")),
        "the final URL is in the history: {shown}"
    );
    let err = home.fails(&["register", &files.url("/my-plugin/init")]);
    assert!(err.contains("already registered"), "{err}");
    let err = home.fails(&["register", &files.url("/loop")]);
    assert!(err.contains("redirect"), "{err}");
    let err = home.fails(&[
        "register",
        &files.url("/my-plugin/init"),
        "--library",
        "x.so",
    ]);
    assert!(err.contains("`--library` is for a local manifest"), "{err}");
}

#[test]
fn downloads_keep_to_their_limits() {
    let files = FileServer::start(vec![("/small", vec![7u8; 100])]);
    let dir = tempfile::tempdir().unwrap();
    let limits = DownloadLimits {
        max_bytes: 1000,
        timeout: Duration::from_secs(1),
        max_redirects: 2,
    };
    let run = |url: String, name: &str| {
        market::block_on(market::download(&url, &dir.path().join(name), limits))
    };
    let ok = run(files.url("/small"), "small").unwrap();
    assert_eq!((ok.size, ok.sha256.len()), (100, 64));
    let err = run(files.url("/endless"), "endless")
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than the limit of 1000 bytes"), "{err}");
    let err = run(files.url("/huge"), "huge").unwrap_err().to_string();
    assert!(
        err.contains("1000000000 bytes, more than the limit"),
        "{err}"
    );
    let started = Instant::now();
    let err = run(files.url("/slow"), "slow").unwrap_err().to_string();
    assert!(err.contains("did not finish within 1 s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4));
    let err = run(files.url("/loop"), "loop").unwrap_err().to_string();
    assert!(err.contains("redirect"), "{err}");
    for url in ["file:///etc/passwd", "ftp://127.0.0.1/x.so"] {
        let err = run(url.to_owned(), "scheme").unwrap_err().to_string();
        assert!(err.contains("URLs are not downloaded"), "{err}");
    }
}
