//! `plugbay trust add NAME KEY`, `plugbay trust list`, `plugbay trust remove NAME|FINGERPRINT`

use std::io::Write;

use anyhow::Result;
use plugbay_host::attestation::{read_public_key, TrustStore, NAMESPACE};

use super::table::Table;
use super::{print_json, Context};

/// Manage the reviewer keys whose signed reviews this host trusts.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Trust a reviewer's public key to sign reviews under NAME
    #[command(after_help = "\
Examples:
  plugbay trust add alice@example.com alice_review.pub
  plugbay trust add bob 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA… bob@laptop'

The key is an Ed25519 OpenSSH public key (a `.pub` file from `ssh-keygen -t ed25519`).
It is written to `allowed_signers` in the registry's home, as OpenSSH writes that file,
trusted for the `plugbay-review` namespace only. `plugbay install` then registers a
plugin approved when its attestation is signed by this key and names NAME as its
reviewer; a review signed by any other key leaves the plugin pending. Check an
attestation with OpenSSH alone:
  ssh-keygen -Y verify -f $PLUGBAY_HOME/allowed_signers -I NAME -n plugbay-review \\
      -s attestation.json.sig < attestation.json")]
    Add(AddArgs),
    /// List the trusted reviewer keys
    #[command(after_help = "\
Examples:
  plugbay trust list
  plugbay --json trust list

Prints NAME, FINGERPRINT (SHA256:…, as `ssh-keygen -l` prints it) and the key's comment.")]
    List,
    /// Stop trusting a reviewer (every key of NAME) or one key (by its fingerprint)
    #[command(after_help = "\
Examples:
  plugbay trust remove alice@example.com
  plugbay trust remove SHA256:8Yh0…

Plugins already installed stay as they are; review them again if the key was
compromised (`plugbay list`, `plugbay show ID` name who approved each).")]
    Remove(RemoveArgs),
}

/// `trust add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The reviewer's name, as attestations signed with this key give it
    pub name: String,
    /// The public key: a `.pub` file, or the key itself (`ssh-ed25519 AAAA…`)
    pub key: String,
}

/// `trust remove`.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// A reviewer's name, or a key's fingerprint (`SHA256:…`)
    #[arg(value_name = "NAME|FINGERPRINT")]
    pub given: String,
}

/// Runs the command.
pub fn exec(command: Command, context: &Context) -> Result<()> {
    let home = context.home()?;
    let mut store = TrustStore::open(&home)?;
    let mut out = std::io::stdout().lock();
    match command {
        Command::Add(args) => {
            let key = read_public_key(&args.key)?;
            let added = store.add(&args.name, &key)?;
            if context.json {
                return print_json(&added);
            }
            writeln!(
                out,
                "trusted key {} to sign reviews ({NAMESPACE}) as `{}`, in {}",
                added.fingerprint,
                added.name,
                store.path().display()
            )?;
        }
        Command::List => {
            let keys = store.list();
            if context.json {
                return print_json(&keys);
            }
            if keys.is_empty() {
                writeln!(
                    out,
                    "no trusted reviewer keys in {}; add one with `plugbay trust add NAME KEY.pub`",
                    store.path().display()
                )?;
                return Ok(());
            }
            let mut table = Table::new(&["NAME", "FINGERPRINT", "COMMENT"]);
            for key in keys {
                table.row(vec![key.name, key.fingerprint, key.comment]);
            }
            table.write(&mut out)?;
        }
        Command::Remove(args) => {
            let removed = store.remove(&args.given)?;
            if context.json {
                return print_json(&removed);
            }
            for key in removed {
                writeln!(
                    out,
                    "no longer trusted: key {} of `{}`",
                    key.fingerprint, key.name
                )?;
            }
        }
    }
    Ok(())
}
