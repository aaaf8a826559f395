//! Code generation: the `Export` impl and the exported root module.

use proc_macro2::{Ident, Span, TokenStream};
use quote::quote;

use plugbay_manifest::Hook;

use crate::ast::Input;

/// abi_stable's name for the exported root module loader; plugbay-api checks that
/// this matches `abi_stable::library::ROOT_MODULE_LOADER_NAME`.
const ROOT_MODULE_EXPORT_NAME: &str = "_1as_0lib_1header_0root_bmodule_bloader";

pub fn expand(input: Input) -> TokenStream {
    let api = api_path();
    let ident = &input.ident;
    let manifest = input.manifest.to_json();
    let manifest_path = input.manifest_path.to_string_lossy().into_owned();
    let export = Ident::new(ROOT_MODULE_EXPORT_NAME, Span::call_site());
    let declares_init = input.manifest.has_hook(Hook::Init);
    let declares_cleanup = input.manifest.has_hook(Hook::Cleanup);
    let sdk_allocator = input.global_allocator;
    // The library's own allocator (see `__private::Allocator`), unless the author
    // asked to keep the crate's.
    let allocator = input.global_allocator.then(|| {
        quote! {
            #[global_allocator]
            static __PLUGBAY_ALLOCATOR: #api::__private::Allocator = #api::__private::Allocator;
        }
    });
    let panic_abort = "a plugin must be built with `panic = \"unwind\"` (cargo's default): with `panic = \"abort\"` a panic in the plugin would end the host, and hosts refuse such libraries; remove `panic = \"abort\"` from the `[profile.*]` sections of Cargo.toml (the workspace's, if the plugin is in one)";
    quote! {
        impl #api::__private::Export for #ident {
            const MANIFEST: &'static str = #manifest;
            const DECLARES_INIT: bool = #declares_init;
            const DECLARES_CLEANUP: bool = #declares_cleanup;
            const SDK_ALLOCATOR: bool = #sdk_allocator;
        }

        // A library exports one plugin: a second `#[plugbay::plugin]` in the crate
        // defines this name again, an error that names it.
        #[doc(hidden)]
        #[macro_export]
        macro_rules! __plugbay_allows_one_plugin_per_library {
            () => {};
        }

        #[cfg(panic = "abort")]
        ::core::compile_error!(#panic_abort);

        #allocator

        const _: () = {
            // Rebuild the plugin when its manifest changes.
            const _: &[u8] = ::core::include_bytes!(#manifest_path);

            #[unsafe(no_mangle)]
            #[allow(non_upper_case_globals)]
            pub static #export: #api::__private::LibHeader =
                #api::__private::lib_header::<#ident>();
        };
    }
}

/// The path to plugbay-api as the plugin crate names it (`plugbay`, `plugbay_api`, …).
fn api_path() -> TokenStream {
    use proc_macro_crate::{crate_name, FoundCrate};
    match crate_name("plugbay-api") {
        // `Itself` is also what doctests and examples of plugbay-api see; plugbay-api
        // declares `extern crate self as plugbay_api` so the absolute path works in both.
        Ok(FoundCrate::Itself) | Err(_) => quote!(::plugbay_api),
        Ok(FoundCrate::Name(name)) => {
            let name = Ident::new(&name, Span::call_site());
            quote!(::#name)
        }
    }
}
