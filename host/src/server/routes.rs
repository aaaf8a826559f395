//! The one table of routes: the router is built from it and so is the OpenAPI
//! document, so the two cannot drift apart.

use crate::registry::Scope;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone (`GET /health`).
    Public,
    /// Any valid key, whatever its scopes.
    AnyKey,
    /// A valid key with this scope.
    Scope(Scope),
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Health,
    OpenApi,
    ListPlugins,
    GetPlugin,
    RegisterPlugin,
    PutPlugin,
    EnablePlugin,
    DisablePlugin,
    UnregisterPlugin,
    ReviewPlugin,
    ProcessBatch,
    UpgradePlugin,
    #[cfg(feature = "market")]
    InstallPlugin,
    #[cfg(feature = "market")]
    PublishPlugin,
}

/// One route.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// The path, with `{id}` for a plugin id (axum and OpenAPI write it alike).
    pub path: &'static str,
    pub operation: Operation,
    pub access: Access,
}

/// Every route the server has.
pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/health",
        operation: Operation::Health,
        access: Access::Public,
    },
    Route {
        method: "GET",
        path: "/openapi.json",
        operation: Operation::OpenApi,
        access: Access::AnyKey,
    },
    Route {
        method: "GET",
        path: "/plugins",
        operation: Operation::ListPlugins,
        access: Access::Scope(Scope::Read),
    },
    Route {
        method: "POST",
        path: "/plugins/register",
        operation: Operation::RegisterPlugin,
        access: Access::Scope(Scope::Write),
    },
    #[cfg(feature = "market")]
    Route {
        method: "POST",
        path: "/plugins/install",
        operation: Operation::InstallPlugin,
        access: Access::Scope(Scope::Install),
    },
    Route {
        method: "GET",
        path: "/plugins/{id}",
        operation: Operation::GetPlugin,
        access: Access::Scope(Scope::Read),
    },
    Route {
        method: "PUT",
        path: "/plugins/{id}",
        operation: Operation::PutPlugin,
        access: Access::Scope(Scope::Write),
    },
    Route {
        method: "DELETE",
        path: "/plugins/{id}",
        operation: Operation::UnregisterPlugin,
        access: Access::Scope(Scope::Write),
    },
    Route {
        method: "PUT",
        path: "/plugins/{id}/enable",
        operation: Operation::EnablePlugin,
        access: Access::Scope(Scope::Write),
    },
    Route {
        method: "PUT",
        path: "/plugins/{id}/disable",
        operation: Operation::DisablePlugin,
        access: Access::Scope(Scope::Write),
    },
    Route {
        method: "POST",
        path: "/plugins/{id}/review",
        operation: Operation::ReviewPlugin,
        access: Access::Scope(Scope::Review),
    },
    Route {
        method: "POST",
        path: "/plugins/{id}/process",
        operation: Operation::ProcessBatch,
        access: Access::Scope(Scope::Execute),
    },
    Route {
        method: "POST",
        path: "/plugins/{id}/upgrade",
        operation: Operation::UpgradePlugin,
        access: Access::Scope(Scope::Write),
    },
    #[cfg(feature = "market")]
    Route {
        method: "POST",
        path: "/plugins/{id}/publish",
        operation: Operation::PublishPlugin,
        access: Access::Scope(Scope::Publish),
    },
];

/// The methods a concrete path answers (with `HEAD` wherever `GET` is), as the router
/// matches: a static path wins over one with `{id}`.
pub(crate) fn allowed_methods(path: &str) -> Vec<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    let matches = |pattern: &str, exact: bool| {
        let parts: Vec<&str> = pattern.split('/').collect();
        parts.len() == segments.len()
            && parts.iter().zip(&segments).all(|(part, segment)| {
                part == segment || (!exact && *part == "{id}" && !segment.is_empty())
            })
    };
    let exact = ROUTES.iter().any(|route| matches(route.path, true));
    let mut methods: Vec<&'static str> = ROUTES
        .iter()
        .filter(|route| matches(route.path, exact))
        .map(|route| route.method)
        .collect();
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    methods
}

impl Operation {
    /// The statuses the operation answers with, besides the catch-all `default`
    /// (500 `internal`, 503 `request_timeout`), each with what it means.
    pub(crate) fn responses(self) -> &'static [(u16, &'static str)] {
        const UNAUTHORIZED: (u16, &str) = (
            401,
            "`unauthorized`: no `Authorization: Bearer KEY` header, or a malformed, unknown or revoked key",
        );
        const FORBIDDEN: (u16, &str) = (403, "`forbidden`: the key lacks the route's scope");
        const BAD_ID: (u16, &str) = (
            400,
            "`invalid_id`: the id is neither `name@version` nor a plugin's name",
        );
        const NOT_FOUND: (u16, &str) = (404, "`not_found`: no plugin has this id or name");
        const AMBIGUOUS: (u16, &str) = (
            409,
            "`ambiguous_name`: the `{id}` is a bare name with several registered versions, not exactly one of them enabled; the message lists them",
        );
        const TOO_LARGE: (u16, &str) = (
            413,
            "`payload_too_large`: the body is larger than the server's limit",
        );
        match self {
            Operation::Health => &[(200, "the server is up")],
            Operation::OpenApi => &[(200, "this document"), UNAUTHORIZED],
            Operation::ListPlugins => &[(200, "every registered plugin, by id"), UNAUTHORIZED, FORBIDDEN],
            Operation::GetPlugin => &[
                (200, "the plugin"),
                BAD_ID,
                UNAUTHORIZED,
                FORBIDDEN,
                NOT_FOUND,
                AMBIGUOUS,
            ],
            Operation::RegisterPlugin => &[
                (201, "registered, pending review; `Location` names the new plugin"),
                (
                    400,
                    "`invalid_body`: the body is not valid, or a field disagrees with the plugin's manifest, or the entry point is remote, missing or not a loadable plugin; `field` names the field",
                ),
                UNAUTHORIZED,
                FORBIDDEN,
                (409, "`already_registered`: a plugin with this name and version is registered"),
                TOO_LARGE,
            ],
            Operation::PutPlugin => &[
                (200, "a rebuild registered as the plugin's next revision, pending review again (`revision` is one more, `previous` the one it replaced), or the plugin as it was when the library and the manifest are the ones registered"),
                (201, "registered, pending review: `id` was not registered; `Location` names the new plugin"),
                (
                    400,
                    "`invalid_id`: not an id `name@version`; `invalid_body`: the body is not valid, names another id than the path, a field disagrees with the plugin's manifest, or the entry point is remote, missing or not a loadable plugin; `field` names the field",
                ),
                UNAUTHORIZED,
                FORBIDDEN,
                TOO_LARGE,
            ],
            #[cfg(feature = "market")]
            Operation::InstallPlugin => &[
                (201, "installed: approved when a trusted reviewer signed it, else pending; `Location` names the plugin"),
                (400, "`invalid_body`: the body is not valid or `reference` is not an OCI reference; `field` names the field"),
                UNAUTHORIZED,
                FORBIDDEN,
                (409, "`already_registered`: a plugin with this name and version is registered"),
                TOO_LARGE,
                (
                    422,
                    "`artifact_refused`: a digest or the signature does not verify, the artifact contradicts its attestation (a tag moved, a blob was replaced) or names another plugin, it has no library for this platform, or it is not a plugbay plugin; nothing was stored",
                ),
                (502, "`upstream_failed`: the OCI registry could not be reached, or refused"),
            ],
            #[cfg(feature = "market")]
            Operation::PublishPlugin => &[
                (200, "published: the reference and the digest its tag names"),
                (400, "`invalid_id`, or `invalid_body`: a bad body, a bad `reference`, or a platform library that cannot be read; `field` names the field"),
                UNAUTHORIZED,
                FORBIDDEN,
                NOT_FOUND,
                (
                    409,
                    "`not_publishable`: the plugin is not approved, its approval is not signed, or a platform library is missing or differs from the attested one; `tag_exists`: the version's tag names another artifact (`force` moves it)",
                ),
                TOO_LARGE,
                (502, "`upstream_failed`: the OCI registry could not be reached, or refused"),
            ],
            Operation::EnablePlugin => &[
                (200, "the plugin, enabled"),
                BAD_ID,
                UNAUTHORIZED,
                FORBIDDEN,
                NOT_FOUND,
                (
                    409,
                    "`not_approved`: the plugin has not been approved; `library_changed`: its library changed since review; `ambiguous_name`: a bare name with several versions, not exactly one enabled",
                ),
            ],
            Operation::DisablePlugin => &[
                (200, "the plugin, disabled; a running instance was drained, cleaned up and stopped"),
                BAD_ID,
                UNAUTHORIZED,
                FORBIDDEN,
                NOT_FOUND,
                AMBIGUOUS,
            ],
            Operation::UnregisterPlugin => &[
                (200, "the plugin as it was; a running instance was drained, cleaned up and stopped"),
                BAD_ID,
                UNAUTHORIZED,
                FORBIDDEN,
                NOT_FOUND,
                AMBIGUOUS,
            ],
            Operation::ReviewPlugin => &[
                (200, "the plugin, approved or rejected"),
                (
                    400,
                    "`invalid_id`, or `invalid_body`: a bad body, a grant the manifest does not request, an approval without `process:data` for a plugin with a `process` hook, or a rejection without a reason; `field` names the field",
                ),
                UNAUTHORIZED,
                FORBIDDEN,
                NOT_FOUND,
                (409, "`library_changed`: the library changed since registration; `ambiguous_name`: a bare name with several versions, not exactly one enabled"),
                TOO_LARGE,
            ],
            Operation::UpgradePlugin => &[
                (200, "the version is current; the instances of the version before it were drained, cleaned up and stopped"),
                BAD_ID,
                UNAUTHORIZED,
                FORBIDDEN,
                NOT_FOUND,
                (
                    409,
                    "`not_approved`, `disabled` or `library_changed` (since review): only an approved, enabled version whose library is the one reviewed can become current; `current_changed`: another upgrade of the name happened meanwhile",
                ),
                (500, "`upgrade_failed`: the version did not start (its message says why, naming it); the version before it stays current and serves on"),
            ],
            Operation::ProcessBatch => &[
                (200, "the processed records"),
                (400, "`invalid_id`, or `invalid_body`: the body is not a JSON array"),
                UNAUTHORIZED,
                FORBIDDEN,
                NOT_FOUND,
                (
                    409,
                    "`not_approved`, `disabled`, `library_changed` (since review), `not_permitted` (the plugin's manifest has no `process` hook, or a review made before plugbay refused it did not grant `process:data`), `ambiguous_name` (a bare name with several versions, none of them current, and not exactly one enabled), or `no_current_version` (a bare name whose current version was unregistered while the batch waited)",
                ),
                TOO_LARGE,
                (422, "`plugin_error`: the plugin refused the batch; the message is the plugin's"),
                (
                    500,
                    "`plugin_panicked`, `plugin_failed` or `plugin_start_failed`: the instance failed or could not start; the next batch starts a fresh one",
                ),
                (502, "`invalid_plugin_output`: the plugin returned something that is not a JSON array"),
                (
                    503,
                    "`request_timeout`: the request did not finish within the server's request timeout; `plugin_backoff`: the plugin's instances failed too often, so the next one starts later (`Retry-After` says in how many seconds, the message at what time), or too many of its workers are stuck in plugin code",
                ),
                (504, "`plugin_timeout`: the plugin missed its deadline (`timeout_ms`); the next batch starts a fresh instance, at once for the first failures and later with a growing delay"),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_methods_follow_the_router() {
        assert_eq!(allowed_methods("/plugins"), ["GET", "HEAD"]);
        assert_eq!(allowed_methods("/plugins/register"), ["POST"]);
        assert_eq!(
            allowed_methods("/plugins/a@1.0.0"),
            ["GET", "DELETE", "HEAD"]
        );
        assert_eq!(allowed_methods("/plugins/a@1.0.0/enable"), ["PUT"]);
        assert!(allowed_methods("/nope").is_empty());
    }
}
