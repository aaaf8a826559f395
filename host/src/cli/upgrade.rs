//! `plugbay upgrade NAME@VERSION`

use std::io::Write;

use anyhow::{bail, Result};

use super::{print_json, Context};

/// Make a version the current version of its name.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay upgrade sequencer@2.0.0
  plugbay upgrade sequencer@1.0.0      # back to the version before
  plugbay --json upgrade sequencer@2.0.0

Several versions of a plugin may be registered; one of them is the current version of
its name, the one that batches sent to the name (`POST /plugins/NAME/process`) reach.
The first version of a name to be enabled becomes current by itself. Only an approved,
enabled version whose library is the one reviewed can become current.

This command changes the registry; it does not start the plugin. A `plugbay serve` on
the same registry switches at the name's next batch: it starts the new version while
the old one serves, then cleans the old one up before the new one takes a batch. If
the new version does not start there, the version before it stays current, and the
audit log (`plugbay show ID`) says why. `POST /plugins/NAME@VERSION/upgrade` does the
same through a running server and answers with the outcome.")]
pub struct Args {
    /// The version to make current, `name@version`
    pub id: String,
}

/// Makes the version current.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    if !args.id.contains('@') {
        bail!(
            "`{}` is a name; give the version to make current, as `{}@VERSION` (`plugbay list` shows the registered versions)",
            args.id,
            args.id
        );
    }
    let mut registry = context.registry()?;
    let switched = registry.upgrade(&args.id, context.actor())?;
    if context.json {
        return print_json(&switched);
    }
    let mut out = std::io::stdout().lock();
    match (&switched.from, switched.changed) {
        (_, false) => writeln!(out, "{} is the current version of {} already", switched.to, switched.name)?,
        (Some(from), true) => writeln!(
            out,
            "{} is the current version of {} (was {from}); a `plugbay serve` on this registry switches at the name's next batch",
            switched.to, switched.name
        )?,
        (None, true) => writeln!(
            out,
            "{} is the current version of {}",
            switched.to, switched.name
        )?,
    }
    Ok(())
}
