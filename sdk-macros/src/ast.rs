//! Parsing and validation: the attribute's arguments, the item, and `plugin.json`.

use std::path::{Path, PathBuf};

use plugbay_manifest::{Hook, Manifest};
use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{Ident, Item, LitBool, LitStr, Token};

/// A validated use of `#[plugbay::plugin]`.
pub struct Input {
    /// The plugin struct's name.
    pub ident: Ident,
    /// The manifest, validated.
    pub manifest: Manifest,
    /// Where the manifest was read from (tracked so that edits rebuild the plugin).
    pub manifest_path: PathBuf,
    /// Whether the library gets the SDK's allocator as its `#[global_allocator]`
    /// (`global_allocator = false` leaves the crate's own, or Rust's default).
    pub global_allocator: bool,
}

impl Input {
    pub fn parse(args: TokenStream, item: TokenStream) -> syn::Result<Input> {
        let mut manifest_arg: Option<LitStr> = None;
        let mut allocator_arg: Option<LitBool> = None;
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("manifest") {
                option_value(
                    &meta,
                    &mut manifest_arg,
                    "`manifest` takes a string literal path, like `manifest = \"plugin.json\"`",
                )
            } else if meta.path.is_ident("global_allocator") {
                option_value(
                    &meta,
                    &mut allocator_arg,
                    "`global_allocator` takes `true` (the default: the SDK's allocator) or `false` (the crate declares its own `#[global_allocator]`, or keeps Rust's default)",
                )
            } else {
                Err(meta.error(format!(
                    "unknown option `{}`; `#[plugbay::plugin]` takes `manifest = \"path/to/plugin.json\"` and `global_allocator = false` (the plugin's settings go in plugin.json)",
                    path_text(&meta.path)
                )))
            }
        });
        syn::parse::Parser::parse2(parser, args)?;

        let item: Item = syn::parse2(item)?;
        let ident = match item {
            Item::Struct(item) => {
                if !item.generics.params.is_empty() {
                    return Err(syn::Error::new_spanned(
                        &item.generics,
                        "a plugin struct cannot have generic parameters; remove them and give its fields concrete types (a plugin library exports one concrete type)",
                    ));
                }
                item.ident
            }
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    format!(
                        "`#[plugbay::plugin]` goes on a struct that implements `plugbay::Plugin`, not on {}",
                        describe(&other)
                    ),
                ))
            }
        };

        let (manifest_path, span) = match &manifest_arg {
            Some(lit) => (relative_to_source(lit), lit.span()),
            None => (default_manifest_path()?, Span::call_site()),
        };
        let text = std::fs::read_to_string(&manifest_path).map_err(|err| {
            let hint = if manifest_arg.is_some() {
                "check the `manifest` path, which is relative to the directory of the file that holds the attribute"
            } else {
                "create plugin.json beside Cargo.toml (see the plugbay-api docs for its fields), or name another file with `#[plugbay::plugin(manifest = \"path/to/plugin.json\")]`"
            };
            syn::Error::new(
                span,
                format!(
                    "cannot read plugin manifest {}: {}; {hint}",
                    manifest_path.display(),
                    lowercase_io(&err)
                ),
            )
        })?;
        let manifest = Manifest::parse(&text).map_err(|err| {
            syn::Error::new(
                span,
                format!(
                    "invalid plugin manifest {}: {err}",
                    file_name(&manifest_path)
                ),
            )
        })?;
        if !manifest.has_hook(Hook::Process) {
            return Err(syn::Error::new(
                span,
                format!(
                    "invalid plugin manifest {}: `hooks` does not list `process`, but every plugin implements `Plugin::process`, and a host sends batches only to plugins that list it; add \"process\" to `hooks`",
                    file_name(&manifest_path)
                ),
            ));
        }
        check_crate_type()?;
        Ok(Input {
            ident,
            manifest,
            manifest_path,
            global_allocator: allocator_arg.is_none_or(|value| value.value),
        })
    }
}

/// Reads the value of the option `meta` names (`name = LITERAL`) into `slot`: an
/// error if it was given before, or if it has no `=` or a value that is not a `T`
/// (then `usage` is the message).
fn option_value<T: syn::parse::Parse>(
    meta: &syn::meta::ParseNestedMeta<'_>,
    slot: &mut Option<T>,
    usage: &str,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error(format!(
            "`{}` is given twice; keep one",
            path_text(&meta.path)
        )));
    }
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(usage));
    }
    let value = meta.value()?;
    let literal = value
        .parse()
        .map_err(|err| syn::Error::new(err.span(), usage))?;
    *slot = Some(literal);
    Ok(())
}

/// Refuses a plugin crate whose library is not built as a dynamic library (a
/// `cdylib`): cargo's default, an `rlib`, is nothing a host can load, and without
/// this check the mistake shows only later, as a missing `lib….so`.
///
/// Read from the crate's `Cargo.toml`, and only for its library target: binaries
/// (trybuild's test crates), tests and examples that use the attribute are not
/// plugin libraries, and plugbay-api's own doctests are examples.
fn check_crate_type() -> syn::Result<()> {
    if std::env::var_os("CARGO_BIN_NAME").is_some() {
        return Ok(());
    }
    let (Some(dir), Ok(crate_name)) = (
        std::env::var_os("CARGO_MANIFEST_DIR"),
        std::env::var("CARGO_CRATE_NAME"),
    ) else {
        return Ok(());
    };
    let cargo_toml = Path::new(&dir).join("Cargo.toml");
    let Ok(text) = std::fs::read_to_string(&cargo_toml) else {
        return Ok(());
    };
    let Ok(document) = text.parse::<toml_edit::DocumentMut>() else {
        return Ok(());
    };
    let Some(package) = document
        .get("package")
        .and_then(|package| package.get("name"))
        .and_then(|name| name.as_str())
    else {
        return Ok(());
    };
    if package == "plugbay-api" {
        return Ok(());
    }
    let lib = document.get("lib");
    let lib_name = lib
        .and_then(|lib| lib.get("name"))
        .and_then(|name| name.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| package.replace('-', "_"));
    if lib_name != crate_name {
        return Ok(());
    }
    let types: Vec<String> = lib
        .and_then(|lib| lib.get("crate-type").or_else(|| lib.get("crate_type")))
        .and_then(|types| types.as_array())
        .map(|types| {
            types
                .iter()
                .filter_map(|value| value.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if types.iter().any(|kind| kind == "cdylib") {
        return Ok(());
    }
    let built_as = if types.is_empty() {
        "a Rust library (`rlib`, cargo's default)".to_owned()
    } else {
        format!(
            "{} only",
            types
                .iter()
                .map(|kind| format!("`{kind}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Err(syn::Error::new(
        Span::call_site(),
        format!(
            "crate `{package}` is built as {built_as}, which no host can load: a plugin is a dynamic library; add `crate-type = [\"cdylib\"]` under `[lib]` in {}",
            cargo_toml.display()
        ),
    ))
}

fn default_manifest_path() -> syn::Result<PathBuf> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| {
        syn::Error::new(
            Span::call_site(),
            "CARGO_MANIFEST_DIR is not set; build the plugin with cargo",
        )
    })?;
    Ok(Path::new(&dir).join("plugin.json"))
}

/// `lit`'s path, relative to the directory of the file that holds it (as
/// `include_str!` reads paths), or to the crate's root when the compiler cannot tell.
fn relative_to_source(lit: &LitStr) -> PathBuf {
    let path = PathBuf::from(lit.value());
    if path.is_absolute() {
        return path;
    }
    let source = lit.span().unwrap().local_file();
    let base = match source.as_deref().and_then(Path::parent) {
        Some(dir) if source.as_deref().is_some_and(Path::exists) => dir.to_path_buf(),
        _ => std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    let joined = base.join(path);
    std::path::absolute(&joined).unwrap_or(joined)
}

/// A path as written, without the spaces `to_token_stream().to_string()` puts in.
fn path_text(path: &syn::Path) -> String {
    let segments = path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect::<Vec<_>>()
        .join("::");
    if path.leading_colon.is_some() {
        format!("::{segments}")
    } else {
        segments
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn lowercase_io(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => err.to_string().to_lowercase(),
    }
}

fn describe(item: &Item) -> &'static str {
    match item {
        Item::Enum(_) => "an enum",
        Item::Fn(_) => "a function",
        Item::Impl(_) => "an impl block",
        Item::Mod(_) => "a module",
        Item::Trait(_) => "a trait",
        Item::Union(_) => "a union",
        Item::Type(_) => "a type alias",
        Item::Const(_) => "a constant",
        Item::Static(_) => "a static",
        Item::Use(_) => "a `use` declaration",
        Item::Macro(_) => "a macro invocation",
        _ => "this item",
    }
}
