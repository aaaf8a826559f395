//! The marketplace commands: `plugbay publish ID oci://…`, `plugbay install REF`,
//! `plugbay search oci://…`, `plugbay attestation ID`, the signed half of
//! `plugbay review approve`, and `plugbay register URL`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context as _, Result};
use plugbay_host::attestation::{Platform, SigningKey, TrustStore, NAMESPACE};
use plugbay_host::market::{
    self, DownloadLimits, Market, MarketOptions, MarketplaceRef, OfferTrust, Outcome, PluginRef,
    PublishBundle, MARKETPLACE_ENV,
};
use plugbay_host::registry::Registry;
use plugbay_host::{Isolation, Permission};

use super::table::Table;
use super::{permission_list, print_json, Context};

/// `OS/ARCH=PATH`: a library built for another platform.
#[derive(Debug, Clone)]
pub struct PlatformLibrary {
    /// The platform.
    pub platform: Platform,
    /// The file.
    pub path: PathBuf,
}

impl FromStr for PlatformLibrary {
    type Err = String;

    fn from_str(text: &str) -> Result<PlatformLibrary, String> {
        let (platform, path) = text.split_once('=').ok_or_else(|| {
            format!("`{text}` is not `OS/ARCH=PATH`, e.g. `windows/amd64=target/x86_64-pc-windows-gnu/release/x.dll`")
        })?;
        Ok(PlatformLibrary {
            platform: platform.parse().map_err(|err| format!("{err}"))?,
            path: PathBuf::from(path),
        })
    }
}

fn pairs(libraries: &[PlatformLibrary]) -> Vec<(Platform, PathBuf)> {
    libraries
        .iter()
        .map(|library| (library.platform.clone(), library.path.clone()))
        .collect()
}

/// How to reach a registry: shared by `publish`, `install` and `search`.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Speak plain HTTP to the registry (registries on loopback always are)
    #[arg(long)]
    pub plain_http: bool,
    /// The registry user [default: the Docker config file's credentials]
    #[arg(long, value_name = "USER", requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password (or token) from stdin, as `docker login` does
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
}

impl RegistryArgs {
    fn market(&self) -> Result<Market> {
        let credentials = match &self.username {
            Some(user) => {
                let mut password = String::new();
                std::io::stdin()
                    .read_to_string(&mut password)
                    .context("reading the registry password from stdin")?;
                let password = password.trim_end_matches(['\n', '\r']).to_owned();
                if password.is_empty() {
                    bail!("`--password-stdin` read an empty password; pipe it in, e.g. `echo \"$TOKEN\" | plugbay … --username {user} --password-stdin`");
                }
                Some((user.clone(), password))
            }
            None => None,
        };
        Ok(Market::new(MarketOptions {
            plain_http: self.plain_http,
            credentials,
            ..MarketOptions::default()
        }))
    }
}

/// What `review approve --signing-key` was asked.
pub struct SignedApproval<'a> {
    pub id: &'a str,
    pub reviewer: &'a str,
    pub grants: Option<Vec<Permission>>,
    pub isolation: Isolation,
    pub key: &'a std::path::Path,
    pub platform_libraries: &'a [PlatformLibrary],
}

/// `review approve … --signing-key KEY`: approves and signs the attestation.
pub fn approve_signed(
    registry: &mut Registry,
    approval: SignedApproval<'_>,
    context: &Context,
) -> Result<()> {
    let key = SigningKey::from_file(approval.key)?;
    let (entry, signed) = registry.approve_signed(
        approval.id,
        approval.reviewer,
        approval.grants,
        approval.isolation,
        &key,
        &pairs(approval.platform_libraries),
    )?;
    let attestation = signed.statement()?;
    if context.json {
        return print_json(&serde_json::json!({
            "plugin": entry,
            "attestation": attestation,
            "signature": signed.signature,
        }));
    }
    super::review::print_approval(registry, &entry, approval.reviewer, approval.isolation)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "signed with key {} ({}): the attestation covers {}",
        key.fingerprint(),
        key.path().display(),
        attestation
            .libraries
            .iter()
            .map(|library| format!("{} ({})", library.platform, library.file))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        out,
        "next: plugbay enable {}, or plugbay publish {} oci://HOST/NAMESPACE/{}",
        entry.id, entry.id, entry.manifest.name
    )?;
    Ok(())
}

/// Show a plugin's signed attestation, or write it for `ssh-keygen -Y verify`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay attestation data-processor@1.0.0
  plugbay attestation data-processor@1.0.0 --output review/

Without `--output`, prints the attestation (JSON, as signed). With it, writes
`attestation.json` and `attestation.json.sig` into DIR and prints the OpenSSH command
that checks them against this home's trusted reviewer keys, e.g.
  ssh-keygen -Y verify -f ~/.local/share/plugbay/allowed_signers -I alice \\
      -n plugbay-review -s review/attestation.json.sig < review/attestation.json
A plugin has an attestation when its current approval was signed
(`plugbay review approve ID --signing-key KEY`) or it was installed approved.")]
pub struct AttestationArgs {
    /// The plugin's id, `name@version` (or its name, when one version is registered)
    pub id: String,
    /// Write `attestation.json` and `attestation.json.sig` into this folder
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
}

/// `plugbay attestation ID`.
pub fn attestation(args: AttestationArgs, context: &Context) -> Result<()> {
    let registry = context.registry()?;
    let id = registry.resolve(&args.id)?;
    let Some(stored) = registry.attestation(&id)? else {
        bail!(
            "plugin `{id}` has no signed attestation of its current approval; sign one with `plugbay review approve {id} --signing-key KEY`"
        );
    };
    let Some(dir) = args.output else {
        if context.json {
            return print_json(&stored);
        }
        std::io::stdout()
            .lock()
            .write_all(&stored.signed.statement)?;
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let statement = dir.join("attestation.json");
    let signature = dir.join("attestation.json.sig");
    std::fs::write(&statement, &stored.signed.statement)
        .with_context(|| format!("writing {}", statement.display()))?;
    std::fs::write(&signature, &stored.signed.signature)
        .with_context(|| format!("writing {}", signature.display()))?;
    let trust = TrustStore::open(registry.home())?;
    let command = format!(
        "ssh-keygen -Y verify -f {} -I {} -n {NAMESPACE} -s {} < {}",
        trust.path().display(),
        stored.reviewer,
        signature.display(),
        statement.display()
    );
    if context.json {
        return print_json(&serde_json::json!({
            "attestation": statement,
            "signature": signature,
            "verify": command,
        }));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {} and {}",
        statement.display(),
        signature.display()
    )?;
    writeln!(out, "check them with OpenSSH:\n  {command}")?;
    Ok(())
}

/// Publish an approved, signed plugin to an OCI registry.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay publish data-processor@1.0.0 oci://registry.example.com/plugins/data-processor
  plugbay publish x@1.0.0 oci://localhost:5000/team/x --platform-library windows/amd64=x.dll

Pushes one OCI artifact tagged with the version (`1.0.0`; `+` in a version becomes `_`):
for each platform the attestation covers, an image manifest holding the library, the
plugin's manifest, the attestation and its signature; an image index over them when
there is more than one. Only a plugin whose current approval is signed can be
published; the library of this platform comes from the registry's store, those of
other platforms from `--platform-library`, and each must have its attested SHA-256.
Credentials come from `--username`/`--password-stdin`, else the Docker config file
(`docker login`). An existing tag that names another artifact is refused unless
`--force`. Prints the reference and the digest the tag names.")]
pub struct PublishArgs {
    /// The plugin's id, `name@version` (or its name, when one version is registered)
    pub id: String,
    /// Where: `oci://HOST/NAMESPACE/NAME` (NAME is the plugin's name)
    #[arg(value_name = "oci://HOST/NAMESPACE/NAME")]
    pub target: String,
    /// The plugin's library for another platform, as attested (repeat it)
    #[arg(long = "platform-library", value_name = "OS/ARCH=PATH")]
    pub platform_libraries: Vec<PlatformLibrary>,
    /// Move the tag even if it names another artifact
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `plugbay publish`.
pub fn publish(args: PublishArgs, context: &Context) -> Result<()> {
    let target = PluginRef::parse(&args.target)?;
    let registry = context.registry()?;
    let id = registry.resolve(&args.id)?;
    let bundle = PublishBundle::from_registry(&registry, &id, &pairs(&args.platform_libraries))?;
    drop(registry);
    let market = args.registry.market()?;
    let published = market::block_on(market.publish(&bundle, &target, args.force))?;
    if context.json {
        return print_json(&published);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "published {} to {} ({}), approved by {}",
        published.id,
        published.reference,
        published
            .platforms
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        published.reviewer
    )?;
    writeln!(out, "  digest  {}", published.digest)?;
    writeln!(
        out,
        "install elsewhere: plugbay install {}",
        published.reference
    )?;
    Ok(())
}

/// The default marketplace: `--marketplace`, else `$PLUGBAY_MARKETPLACE`.
fn default_marketplace(flag: Option<&str>) -> Result<Option<MarketplaceRef>> {
    let given = match flag {
        Some(flag) => Some(flag.to_owned()),
        None => std::env::var(MARKETPLACE_ENV)
            .ok()
            .filter(|value| !value.trim().is_empty()),
    };
    Ok(given
        .map(|text| MarketplaceRef::parse(text.trim()))
        .transpose()?)
}

/// Install a plugin from a marketplace.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay install oci://registry.example.com/plugins/data-processor:1.0.0
  PLUGBAY_MARKETPLACE=oci://registry.example.com/plugins plugbay install data-processor@1.0.0

Pulls the artifact for this host's platform and checks the SHA-256 of every manifest
and blob, then its attestation against the trusted reviewer keys (`plugbay trust`):
- signed by a trusted key: registered approved, with the attested grants and
  isolation (still disabled: `plugbay enable ID`);
- no attestation, or one signed by a key that is not trusted: registered pending
  (`plugbay review approve ID` after your own review);
- a signature that does not verify, a digest that differs, a library other than the
  one attested (a tag moved after signing), or another plugin than the reference
  names: refused, and nothing is stored.
Registration inspects the library as `plugbay register` does, so a library that does
not embed the attested manifest is refused too.")]
pub struct InstallArgs {
    /// `oci://HOST/NAMESPACE/NAME:VERSION`, or `NAME@VERSION` in the default marketplace
    #[arg(value_name = "REFERENCE")]
    pub reference: String,
    /// The default marketplace, `oci://HOST/NAMESPACE` [default: $PLUGBAY_MARKETPLACE]
    #[arg(long, value_name = "oci://HOST/NAMESPACE")]
    pub marketplace: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `plugbay install`.
pub fn install(args: InstallArgs, context: &Context) -> Result<()> {
    let marketplace = default_marketplace(args.marketplace.as_deref())?;
    let reference = PluginRef::for_install(&args.reference, marketplace.as_ref())?;
    let mut registry = context.create_registry()?;
    let host = context.host(&registry)?;
    let trust = TrustStore::open(registry.home())?;
    let market = args.registry.market()?;
    let fetched = market::block_on(market.fetch(&reference, registry.home()))?;
    let installed = market::install(&mut registry, &host, &fetched, &trust, context.actor())?;
    if context.json {
        return print_json(&installed);
    }
    let entry = &installed.entry;
    let mut out = std::io::stdout().lock();
    match &installed.outcome {
        Outcome::Approved {
            reviewer,
            fingerprint,
        } => {
            writeln!(
                out,
                "installed {} from {}: approved by {reviewer} (key {fingerprint})",
                entry.id, installed.reference
            )?;
            writeln!(
                out,
                "  granted    {}\n  isolation  {}",
                permission_list(&entry.review.granted),
                entry.review.isolation.unwrap_or(Isolation::Process)
            )?;
            writeln!(out, "  digest     {}", installed.digest)?;
            writeln!(out, "next: plugbay enable {}", entry.id)?;
        }
        Outcome::Pending { reason } => {
            writeln!(
                out,
                "installed {} from {}: pending review ({reason})",
                entry.id, installed.reference
            )?;
            writeln!(
                out,
                "  requests   {}",
                permission_list(&entry.manifest.permissions)
            )?;
            writeln!(out, "  digest     {}", installed.digest)?;
            writeln!(out, "next: plugbay review approve {}", entry.id)?;
        }
    }
    Ok(())
}

/// List what a marketplace offers.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay search oci://registry.example.com/plugins
  plugbay --json search oci://localhost:5000/team

Lists every plugin version below the namespace (the registry's catalog, then each
repository's tags): NAME, VERSION, PLATFORMS, APPROVED BY and TRUST (`trusted` when the
attestation is signed by a key in `plugbay trust list`, `untrusted`, `unsigned`, or
`invalid` with the reason in `--json`). Needs a registry that lists its catalog
(`/v2/_catalog`).")]
pub struct SearchArgs {
    /// `oci://HOST/NAMESPACE` [default: $PLUGBAY_MARKETPLACE]
    #[arg(value_name = "oci://HOST/NAMESPACE")]
    pub marketplace: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `plugbay search`.
pub fn search(args: SearchArgs, context: &Context) -> Result<()> {
    let marketplace = default_marketplace(args.marketplace.as_deref())?.ok_or_else(|| {
        anyhow::anyhow!(
            "no marketplace given; pass `oci://HOST/NAMESPACE` or set `{MARKETPLACE_ENV}`"
        )
    })?;
    let trust = TrustStore::open(context.home()?)?;
    let market = args.registry.market()?;
    let offers = market::block_on(market.search(&marketplace, &trust))?;
    if context.json {
        return print_json(&offers);
    }
    let mut out = std::io::stdout().lock();
    if offers.is_empty() {
        writeln!(out, "{marketplace} offers no plugbay plugins")?;
        return Ok(());
    }
    let mut table = Table::new(&[
        "NAME",
        "VERSION",
        "PLATFORMS",
        "APPROVED BY",
        "TRUST",
        "DESCRIPTION",
    ]);
    for offer in offers {
        let trust = match &offer.trust {
            OfferTrust::Trusted { .. } => "trusted",
            OfferTrust::Untrusted { .. } => "untrusted",
            OfferTrust::Unsigned => "unsigned",
            OfferTrust::Invalid { .. } => "invalid",
        };
        table.row(vec![
            offer.name,
            offer.version,
            offer
                .platforms
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            offer.reviewer.unwrap_or_else(|| "-".to_owned()),
            trust.to_owned(),
            offer.description.unwrap_or_default(),
        ]);
    }
    table.write(&mut out)?;
    Ok(())
}

/// `plugbay register URL`: downloads the library (or pulls it, for `oci://`) and
/// registers it pending review.
pub fn register_remote(location: &str, context: &Context) -> Result<()> {
    let mut registry = context.create_registry()?;
    let host = context.host(&registry)?;
    let dir = tempfile::Builder::new()
        .prefix(".incoming-")
        .tempdir_in(registry.home())
        .with_context(|| format!("making a temporary folder in {}", registry.home().display()))?;
    let entry = if location.starts_with(market::SCHEME) {
        let reference = PluginRef::for_install(location, None)?;
        let fetched = market::block_on(Market::default().fetch(&reference, registry.home()))?;
        let manifest = fetched.manifest.clone();
        market::register_fetched(&mut registry, &host, &fetched, manifest, context.actor())?
    } else {
        let into = dir.path().join("download");
        let download =
            market::block_on(market::download(location, &into, DownloadLimits::default()))?;
        market::register_download(&mut registry, &host, &download, None, context.actor())?
    };
    if context.json {
        return print_json(&entry);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "registered {} (pending review)", entry.id)?;
    writeln!(out, "  from      {location}")?;
    writeln!(out, "  stored    {}", entry.library.display())?;
    writeln!(out, "  sha256    {}", entry.sha256)?;
    writeln!(
        out,
        "  requests  {}",
        permission_list(&entry.manifest.permissions)
    )?;
    writeln!(out, "next: plugbay review approve {}", entry.id)?;
    Ok(())
}
