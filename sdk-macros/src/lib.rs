//! `#[plugbay::plugin]`: turns a struct that implements `plugbay::Plugin` into an
//! exported Plugbay plugin. Use it through the `plugbay-api` crate, which re-exports it.
//!
//! The attribute reads `plugin.json` beside the crate's `Cargo.toml` (or the file
//! named by `manifest = "PATH"`, relative to the file that holds the attribute),
//! validates it at compile time, embeds it, and generates the library's root module.
//! A bad manifest is a compile error pointing at the attribute.

mod ast;
mod expand;

use proc_macro::TokenStream;

/// Exports a struct that implements `Plugin` as a Plugbay plugin.
///
/// ```ignore
/// #[derive(Default)]
/// #[plugbay::plugin]
/// struct DataProcessor;
/// ```
///
/// Options: `#[plugbay::plugin(manifest = "path/to/plugin.json")]` reads the manifest
/// from a path relative to the file that holds the attribute.
#[proc_macro_attribute]
pub fn plugin(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    // The item is always emitted as written, so that a manifest error is the one
    // error the author sees, not a cascade of "cannot find type".
    let generated = ast::Input::parse(args.into(), item.clone())
        .map(expand::expand)
        .unwrap_or_else(|error| error.to_compile_error());
    quote::quote!(#item #generated).into()
}
