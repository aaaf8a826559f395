//! The OpenAPI 3.1 document, built from the route table so that it lists exactly the
//! routes, bodies, statuses and scopes the server has.

use serde_json::{json, Map, Value};

use super::error::ErrorCode;
use super::routes::{Access, Operation, ROUTES};
use crate::manifest::{FIELDS, HOOKS};
use crate::registry::SCOPES;

/// Semantic versions, as the semver crate reads them: semver.org's, with major, minor
/// and patch at most 18446744073709551615 (`u64::MAX`), as every version in
/// Plugbay is.
fn semver() -> String {
    let number = at_most(&u64::MAX.to_string());
    format!(
        r"{number}\.{number}\.{number}(-((0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?(\+([0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*))?"
    )
}

/// A pattern for the decimal numbers from 0 to `max` (digits), without leading
/// zeros: the shorter numbers, then for each digit of `max` the numbers that share
/// its digits before and have a smaller one there, then `max` itself.
fn at_most(max: &str) -> String {
    let digits = max.as_bytes();
    let mut choices = vec!["0".to_owned()];
    if digits.len() > 1 {
        choices.push(format!("[1-9][0-9]{{0,{}}}", digits.len() - 2));
    }
    for (at, &digit) in digits.iter().enumerate() {
        let low = if at == 0 { b'1' } else { b'0' };
        if digit > low {
            let rest = digits.len() - at - 1;
            let range = if digit - 1 == low {
                (low as char).to_string()
            } else {
                format!("[{}-{}]", low as char, (digit - 1) as char)
            };
            let tail = match rest {
                0 => String::new(),
                rest => format!("[0-9]{{{rest}}}"),
            };
            choices.push(format!("{}{range}{tail}", &max[..at]));
        }
    }
    choices.push(max.to_owned());
    format!("({})", choices.join("|"))
}

/// Plugin names, as the manifest's validator reads them: 1 to 64 characters of
/// `a-z`, `0-9` and `-`, neither first nor last a `-`.
const NAME: &str = "[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?";

/// Permissions, as the manifest validator reads them.
const PERMISSION: &str = r"^(process:data|read:data|write:data|fs:(read|write):(/|\$\{plugin_dir\}|\$\{data_dir\})([^$]|\$(?!\{)|\$\{plugin_dir\}|\$\{data_dir\})*|net:(connect|bind):\+?0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])|sys:dns)$";

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

struct Doc {
    operation_id: &'static str,
    summary: &'static str,
    description: &'static str,
    request: Option<Value>,
    success: Value,
}

fn doc_of(operation: Operation) -> Doc {
    match operation {
        Operation::Health => Doc {
            operation_id: "health",
            summary: "Whether the server is up",
            description: "Needs no key.",
            request: None,
            success: schema("Health"),
        },
        Operation::OpenApi => Doc {
            operation_id: "openapi",
            summary: "This document",
            description: "Any valid key may read it, whatever its scopes.",
            request: None,
            success: json!({ "type": "object" }),
        },
        Operation::ListPlugins => Doc {
            operation_id: "listPlugins",
            summary: "List the registered plugins",
            description: "Every plugin in the registry, ordered by id.",
            request: None,
            success: schema("PluginList"),
        },
        Operation::GetPlugin => Doc {
            operation_id: "getPlugin",
            summary: "Show one plugin",
            description: "Its manifest, library, SHA-256, review and state, and `runtime`: what this server's instances of it did (restarts, the last failure, workers abandoned after missed deadlines, and when a delayed restart may happen).",
            request: None,
            success: schema("Plugin"),
        },
        Operation::RegisterPlugin => Doc {
            operation_id: "registerPlugin",
            summary: "Register a plugin",
            description: "The library named by `entry_point` (an absolute path on the server's machine, a `file://` URL, an `https://` or `http://` URL, downloaded within 256 MiB, 60 s and 5 redirects and never from https down to http, or an `oci://HOST/NAMESPACE/NAME:VERSION` reference, whose library for the server's platform is pulled with every digest checked; its attestation, if any, is ignored: `POST /plugins/install` is the route that takes one) is copied into the server's library store by its SHA-256 and inspected in a confined worker process (never in the server). Its manifest is the `plugin.json` beside the library if that describes the library, else the manifest embedded in the library; `name`, `version`, `permissions` and `description` (when given) must agree with it and with the manifest built into the library, field by field. The plugin is left pending review.",
            request: Some(schema("RegisterRequest")),
            success: schema("Plugin"),
        },
        Operation::PutPlugin => Doc {
            operation_id: "putPlugin",
            summary: "Register a plugin at its id, or a rebuild of it as its next revision",
            description: "The body is the one of `POST /plugins/register` and must name the path's id (`name@version`); `entry_point` is a library on the server's machine (an absolute path or a `file://` URL). If the id is not registered, this registers it as `POST /plugins/register` does (201). If it is and the library or the manifest changed, the entry becomes its next revision: `revision` one more, `previous` the revision it replaced (its SHA-256, manifest and review), pending review again and disabled until approved, its config kept unless it was the old manifest's default; running instances stop at their next batch. Sending the same library and manifest again changes nothing (200, the same revision). `plugbay register DIR --update` does the same from the CLI.",
            request: Some(schema("RegisterRequest")),
            success: schema("Plugin"),
        },
        Operation::EnablePlugin => Doc {
            operation_id: "enablePlugin",
            summary: "Enable an approved plugin",
            description: "Only approved plugins whose library is unchanged since review can be enabled.",
            request: None,
            success: schema("Plugin"),
        },
        Operation::DisablePlugin => Doc {
            operation_id: "disablePlugin",
            summary: "Disable a plugin",
            description: "A running instance finishes the batch in flight, runs `cleanup` and stops.",
            request: None,
            success: schema("Plugin"),
        },
        Operation::UnregisterPlugin => Doc {
            operation_id: "unregisterPlugin",
            summary: "Unregister a plugin",
            description: "Removes the plugin (its audit history stays); a running instance is drained, cleaned up and stopped first.",
            request: None,
            success: schema("Plugin"),
        },
        Operation::ReviewPlugin => Doc {
            operation_id: "reviewPlugin",
            summary: "Approve or reject a plugin (the security review)",
            description: "Approving records the reviewer (the key's name), the time, the library's SHA-256 and the permissions granted: `permissions` if given (each must be requested by the manifest), else every requested permission. Rejecting needs a `reason` and disables the plugin.",
            request: Some(schema("ReviewRequest")),
            success: schema("Plugin"),
        },
        Operation::UpgradePlugin => Doc {
            operation_id: "upgradePlugin",
            summary: "Make a version the current version of its name (a live upgrade)",
            description: "The version (approved, enabled, its library the one reviewed) is started and initialised while the current one serves on; if it starts, it becomes current, the batch the old version's instance is on finishes there, the old instance runs `cleanup` and stops, and batches sent to the name go to the new version from then on (none is lost or refused). If it does not start, nothing changes: the old version stays current, and the error names the new one. Audited as `upgrade` or `upgrade-failed`.",
            request: None,
            success: schema("Upgrade"),
        },
        Operation::ProcessBatch => Doc {
            operation_id: "processBatch",
            summary: "Process a batch of records",
            description: "Sends a JSON array of records through the plugin's `process` hook and returns the array it produced. `{id}` is an id (`name@version`: that version), or a bare name (`data-processor`: its current version, which follows upgrades at a batch boundary). The first batch starts an instance (confined to the granted permissions); later batches reuse it, one at a time. Each call has the plugin's deadline (`timeout_ms`).",
            request: Some(json!({ "type": "array", "items": {}, "description": "the records" })),
            success: json!({ "type": "array", "items": {}, "description": "the processed records" }),
        },
        #[cfg(feature = "market")]
        Operation::InstallPlugin => Doc {
            operation_id: "installPlugin",
            summary: "Install a plugin from a marketplace (an OCI registry)",
            description: "Pulls the artifact `reference` names for the server's platform, checking the SHA-256 of every manifest and blob, then checks its attestation against the server's trusted reviewer keys (`allowed_signers` in its home, managed with `plugbay trust`). Signed by a trusted key: registered approved with the attested grants and isolation (still disabled). No attestation, or one signed by a key that is not trusted: registered pending review. A signature that does not verify, an artifact that contradicts its attestation, or one naming another plugin: refused, nothing stored. Registry credentials are those of the server's Docker config file.",
            request: Some(schema("InstallRequest")),
            success: schema("Installed"),
        },
        #[cfg(feature = "market")]
        Operation::PublishPlugin => Doc {
            operation_id: "publishPlugin",
            summary: "Publish an approved, signed plugin to a marketplace",
            description: "Pushes the plugin as one OCI artifact tagged with its version: per attested platform an image manifest holding the library, the plugin's manifest, the attestation and its signature; an image index when there is more than one platform. The plugin's current approval must be signed (`plugbay review approve ID --signing-key KEY`); libraries of platforms other than the server's are read from `platform_libraries` and must have their attested SHA-256. Registry credentials are those of the server's Docker config file.",
            request: Some(schema("PublishRequest")),
            success: schema("Published"),
        },
    }
}

/// The OpenAPI document of the REST API.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let doc = doc_of(route.operation);
        let mut responses = Map::new();
        for &(status, description) in route.operation.responses() {
            let content = if (200..300).contains(&status) {
                json_content(doc.success.clone())
            } else {
                json_content(schema("Error"))
            };
            let mut response = json!({ "description": description, "content": content });
            if status == 201 {
                response["headers"] = json!({
                    "Location": { "description": "the plugin's path", "schema": { "type": "string" } }
                });
                let mut links = Map::new();
                for other in ROUTES.iter().filter(|other| other.path.contains("{id}")) {
                    let target = doc_of(other.operation).operation_id;
                    links.insert(
                        format!("{}{}", target[..1].to_uppercase(), &target[1..]),
                        json!({ "operationId": target, "parameters": { "id": "$response.body#/id" } }),
                    );
                }
                response["links"] = Value::Object(links);
            }
            if status == 401 || status == 403 {
                response["headers"] = json!({
                    "WWW-Authenticate": { "description": "the Bearer challenge", "schema": { "type": "string" } }
                });
            }
            responses.insert(status.to_string(), response);
        }
        responses.insert(
            "default".to_owned(),
            json!({
                "description": "any other failure: 500 `internal`, 503 `request_timeout`; and what the HTTP layer answers before any route: 400 `bad_request` (not HTTP/1.1 the server can read), 408 `header_timeout`, 414 `uri_too_long`, 431 `headers_too_large`, 503 `too_many_connections` or `shutting_down`, 505 `http_version_not_supported`",
                "content": json_content(schema("Error")),
            }),
        );
        let security = match route.access {
            Access::Public => json!([]),
            Access::AnyKey => json!([{ "bearer": [] }]),
            Access::Scope(scope) => json!([{ "bearer": [scope.as_str()] }]),
        };
        let mut operation = json!({
            "operationId": doc.operation_id,
            "summary": doc.summary,
            "description": doc.description,
            "security": security,
            "responses": responses,
        });
        if route.operation == Operation::UpgradePlugin {
            operation["parameters"] = json!([{
                "name": "id",
                "in": "path",
                "required": true,
                "description": "the id of the version to make current, `name@version`",
                "schema": { "type": "string", "pattern": format!("^{NAME}@{}$", semver()) },
                "example": "data-processor@1.1.0",
            }]);
        } else if route.path.contains("{id}") {
            operation["parameters"] = json!([{
                "name": "id",
                "in": "path",
                "required": true,
                "description": "the plugin's id, `name@version`, or its name alone (its one registered version, else its current version, else its one enabled version)",
                "schema": { "type": "string", "pattern": format!("^{NAME}(@{})?$", semver()) },
                "example": "data-processor@1.0.0",
            }]);
        }
        if let Some(request) = doc.request {
            operation["requestBody"] =
                json!({ "required": true, "content": json_content(request) });
        }
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        item[route.method.to_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Plugbay Plugins API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The registry of `plugbay serve`: register, review, enable, run and unregister native plugins, and install them from or publish them to a marketplace (any OCI registry). Every route but `/health` needs `Authorization: Bearer KEY` with a key from `plugbay keys create`; scopes: `plugins:read`, `plugins:write`, `plugins:review`, `plugins:execute`, `plugins:install`, `plugins:publish`. Every error is a JSON body `{\"error\": {\"code\", \"message\", \"field\"?}}`: an unknown path is 404 `route_not_found`, a known path with another method is 405 `method_not_allowed` (with `Allow`). `HEAD` is answered wherever `GET` is.",
        },
        "servers": [{ "url": "/", "description": "the server that serves this document (127.0.0.1:7070 by default)" }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": format!("an API key from `plugbay keys create`; the scopes a route needs are listed in its security requirement: {}", SCOPES.join(", ")),
                }
            },
            "schemas": schemas(),
        },
    })
}

fn nullable(kind: &str) -> Value {
    json!({ "type": [kind, "null"] })
}

fn schemas() -> Value {
    #[allow(unused_mut)]
    let mut schemas = base_schemas();
    #[cfg(feature = "market")]
    {
        // A plugin as `GET /plugins/{id}` shows it, and where it was installed from.
        let mut installed = schemas["Plugin"].clone();
        installed["properties"]
            .as_object_mut()
            .expect("a schema has properties")
            .remove("runtime");
        installed["properties"]["reference"] =
            json!({ "type": "string", "description": "where it was installed from" });
        installed["properties"]["digest"] = json!({ "type": "string", "description": "the digest of what the reference named (an image index or manifest)" });
        installed["properties"]["platforms"] = json!({ "type": "array", "items": { "type": "string" }, "description": "the platforms the artifact offers, `os/arch`" });
        installed["properties"]["outcome"] = json!({
            "type": "object",
            "required": ["status"],
            "additionalProperties": false,
            "properties": {
                "status": { "type": "string", "enum": ["approved", "pending"] },
                "reviewer": { "type": "string", "description": "who approved it (approved)" },
                "fingerprint": { "type": "string", "description": "their key, `SHA256:…` (approved)" },
                "reason": { "type": "string", "description": "why it waits for a local review (pending)" },
            },
        });
        for field in ["reference", "digest", "platforms", "outcome"] {
            installed["required"]
                .as_array_mut()
                .expect("a schema has required fields")
                .push(json!(field));
        }
        schemas["Installed"] = installed;
    }
    schemas
}

fn base_schemas() -> Value {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
    let mut manifest_properties = Map::new();
    for field in FIELDS {
        let property = match *field {
            "name" => json!({ "type": "string", "pattern": format!("^{NAME}$") }),
            "version" => json!({ "type": "string", "pattern": format!("^{}$", semver()) }),
            "hooks" => json!({ "type": "array", "items": { "type": "string", "enum": HOOKS } }),
            "permissions" => json!({ "type": "array", "items": schema("Permission") }),
            "api_version" => {
                json!({ "type": "string", "description": "a semver requirement on plugbay-api" })
            }
            "timeout_ms" => {
                json!({ "type": "integer", "minimum": 1, "maximum": plugbay_api::manifest::MAX_TIMEOUT_MS })
            }
            "config" => json!({ "type": "object" }),
            _ => json!({ "type": "string" }),
        };
        manifest_properties.insert((*field).to_owned(), property);
    }
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": false,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": false,
                    "properties": {
                        "code": { "type": "string", "enum": codes },
                        "message": { "type": "string", "description": "what failed and what to do" },
                        "field": { "type": "string", "description": "the body field at fault (`permissions[1]`), for `invalid_body`" },
                    },
                }
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "version", "instances", "abandoned_workers"],
            "additionalProperties": false,
            "properties": {
                "status": { "type": "string", "enum": ["ok"] },
                "version": { "type": "string" },
                "instances": { "type": "integer", "minimum": 0, "description": "plugin instances running in this server" },
                "abandoned_workers": { "type": "integer", "minimum": 0, "description": "worker threads abandoned after a missed deadline that still run plugin code" },
            },
        },
        "Permission": {
            "type": "string",
            "description": "`process:data`, `read:data`, `write:data`, `fs:read:PATH`, `fs:write:PATH`, `net:connect:PORT`, `net:bind:PORT` or `sys:dns`",
            "pattern": PERMISSION,
        },
        "Manifest": {
            "type": "object",
            "required": ["name", "version", "description", "author", "main", "hooks", "permissions"],
            "additionalProperties": false,
            "properties": manifest_properties,
        },
        "Review": {
            "type": "object",
            "required": ["status", "reviewer", "reviewed_at", "reviewed_sha256", "granted", "reason", "isolation"],
            "additionalProperties": false,
            "properties": {
                "status": { "type": "string", "enum": ["pending", "approved", "rejected"] },
                "reviewer": nullable("string"),
                "reviewed_at": nullable("string"),
                "reviewed_sha256": nullable("string"),
                "granted": { "type": "array", "items": schema("Permission") },
                "reason": nullable("string"),
                "isolation": { "type": ["string", "null"], "enum": ["thread", "process", null], "description": "where the approved plugin runs: `process` (a worker process of its own) or `thread` (a worker thread of the server, for trusted plugins)" },
            },
        },
        "Plugin": {
            "type": "object",
            "required": ["id", "manifest", "library", "source", "sha256", "plugin_dir", "enabled", "review", "config", "created_at", "updated_at", "revision", "previous", "current"],
            "additionalProperties": false,
            "properties": {
                "id": { "type": "string", "description": "`name@version`" },
                "manifest": schema("Manifest"),
                "library": { "type": "string", "description": "the library's read-only copy in the registry's store (`libraries/<sha256>/<file name>` in the home): what was reviewed and what runs" },
                "source": { "type": ["string", "null"], "description": "the file the library was registered from (null for entries registered before the store whose file had changed)" },
                "sha256": { "type": "string", "description": "the library's SHA-256 at registration" },
                "plugin_dir": { "type": "string", "description": "`${plugin_dir}`" },
                "enabled": { "type": "boolean" },
                "review": schema("Review"),
                "config": { "description": "the config passed to `init` (any JSON), null when unset" },
                "created_at": { "type": "string", "description": "RFC 3339" },
                "updated_at": { "type": "string", "description": "RFC 3339" },
                "revision": { "type": "integer", "minimum": 1, "description": "1 at registration, one more for each rebuilt library registered for the same id (`plugbay register --update`), which is then pending review again" },
                "previous": {
                    "type": ["object", "null"],
                    "description": "the revision this one replaced, for the reviewer to compare (null for the first)",
                    "required": ["revision", "sha256", "manifest", "review", "replaced_at"],
                    "additionalProperties": false,
                    "properties": {
                        "revision": { "type": "integer", "minimum": 1 },
                        "sha256": { "type": "string", "description": "its library's SHA-256" },
                        "manifest": schema("Manifest"),
                        "review": schema("Review"),
                        "replaced_at": { "type": "string", "description": "RFC 3339" },
                    },
                },
                "current": { "type": "boolean", "description": "whether this is the current version of its name, the one a bare name and live upgrades (`POST /plugins/{id}/upgrade`) refer to" },
                "runtime": schema("Runtime"),
            },
        },
        "Runtime": {
            "type": "object",
            "description": "what this server's instances of the plugin did (in `GET /plugins/{id}` only)",
            "required": ["running", "restarts", "recent_failures", "last_failure", "abandoned_workers", "next_start_at"],
            "additionalProperties": false,
            "properties": {
                "running": { "type": "boolean", "description": "an instance runs" },
                "restarts": { "type": "integer", "minimum": 0, "description": "instances started after a failed one" },
                "recent_failures": { "type": "integer", "minimum": 0, "description": "failures (panics, missed deadlines, failed starts) within the restart window" },
                "last_failure": {
                    "type": ["object", "null"],
                    "required": ["at", "reason"],
                    "additionalProperties": false,
                    "properties": {
                        "at": { "type": "string", "description": "RFC 3339" },
                        "reason": { "type": "string" },
                    },
                },
                "abandoned_workers": { "type": "integer", "minimum": 0, "description": "worker threads abandoned after a missed deadline that still run plugin code" },
                "next_start_at": { "type": ["string", "null"], "description": "RFC 3339: batches before then get 503 `plugin_backoff`" },
            },
        },
        "Upgrade": {
            "type": "object",
            "required": ["name", "from", "to", "changed", "retired", "cleanup_errors"],
            "additionalProperties": false,
            "properties": {
                "name": { "type": "string", "pattern": format!("^{NAME}$") },
                "from": { "type": ["string", "null"], "description": "the version that was current (null: none was)" },
                "to": { "type": "string", "description": "the version that is current now" },
                "changed": { "type": "boolean", "description": "false when `to` was current already" },
                "retired": { "type": "array", "items": { "type": "object" }, "description": "the final status of each old instance this server stopped (id, state, batches, records_out, …)" },
                "cleanup_errors": { "type": "array", "items": { "type": "string" }, "description": "why an old instance's cleanup or stop failed, if one did; the upgrade happened all the same" },
            },
        },
        "PluginList": {
            "type": "object",
            "required": ["plugins"],
            "additionalProperties": false,
            "properties": { "plugins": { "type": "array", "items": schema("Plugin") } },
        },
        "RegisterRequest": {
            "type": "object",
            "required": ["name", "version", "entry_point", "permissions"],
            "additionalProperties": false,
            "properties": {
                "name": { "type": "string", "pattern": format!("^{NAME}$"), "description": "must be the manifest's" },
                "version": { "type": "string", "pattern": format!("^{}$", semver()), "description": "must be the manifest's" },
                "description": { "type": "string", "pattern": "\\S", "description": "replaces the manifest's when given; not blank" },
                "entry_point": { "type": "string", "description": "the library: an absolute path on the server's machine, a file:// URL (file:///PATH, file://localhost/PATH), an https:// or http:// URL to download it from, or an oci://HOST/NAMESPACE/NAME:VERSION reference to pull it from" },
                "permissions": { "type": "array", "items": schema("Permission"), "description": "must be exactly what the manifest requests (in any order)" },
            },
            "example": {
                "name": "data-processor",
                "version": "1.0.0",
                "description": "Processes data records",
                "entry_point": "/opt/plugins/data-processor/libdata_processor.so",
                "permissions": ["process:data"],
            },
        },
        "InstallRequest": {
            "type": "object",
            "required": ["reference"],
            "additionalProperties": false,
            "properties": {
                "reference": { "type": "string", "pattern": "^oci://", "description": "`oci://HOST/NAMESPACE/NAME:VERSION`, or `…@sha256:…` to pin a digest" },
            },
            "example": { "reference": "oci://registry.example.com/plugins/data-processor:1.0.0" },
        },
        "PublishRequest": {
            "type": "object",
            "required": ["reference"],
            "additionalProperties": false,
            "properties": {
                "reference": { "type": "string", "pattern": "^oci://", "description": "`oci://HOST/NAMESPACE/NAME`, NAME being the plugin's name; the tag is the version's" },
                "platform_libraries": { "type": "object", "additionalProperties": { "type": "string" }, "description": "the libraries of platforms other than the server's, by `os/arch`, as absolute paths on the server's machine; each must have its attested SHA-256" },
                "force": { "type": "boolean", "description": "move the version's tag if it names another artifact" },
            },
            "example": { "reference": "oci://registry.example.com/plugins/data-processor" },
        },
        "Published": {
            "type": "object",
            "required": ["id", "reference", "digest", "platforms", "reviewer", "uploaded_blobs"],
            "additionalProperties": false,
            "properties": {
                "id": { "type": "string" },
                "reference": { "type": "string", "description": "`oci://HOST/NAMESPACE/NAME:VERSION`" },
                "digest": { "type": "string", "description": "what the tag names" },
                "platforms": { "type": "array", "items": { "type": "string" } },
                "reviewer": { "type": "string" },
                "uploaded_blobs": { "type": "integer", "minimum": 0, "description": "blobs uploaded (the others were in the registry already)" },
            },
        },
        "ReviewRequest": {
            "oneOf": [
                {
                    "type": "object",
                    "title": "approve",
                    "required": ["decision"],
                    "additionalProperties": false,
                    "properties": {
                        "decision": { "type": "string", "enum": ["approve"] },
                        "permissions": { "type": "array", "items": schema("Permission"), "description": "what to grant, each requested by the manifest (every requested permission if left out)" },
                        "isolation": { "type": "string", "enum": ["process", "thread"], "description": "where the plugin runs: `process` (the default: a worker process of its own) or `thread` (a worker thread of the server; for trusted plugins only)" },
                    },
                },
                {
                    "type": "object",
                    "title": "reject",
                    "required": ["decision", "reason"],
                    "additionalProperties": false,
                    "properties": {
                        "decision": { "type": "string", "enum": ["reject"] },
                        "reason": { "type": "string", "pattern": "\\S", "description": "why; not blank" },
                    },
                },
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_up_to_a_limit_are_spelt_out() {
        assert_eq!(at_most("9"), "(0|[1-8]|9)");
        assert_eq!(at_most("205"), "(0|[1-9][0-9]{0,1}|1[0-9]{2}|20[0-4]|205)");
        assert!(semver().starts_with("(0|[1-9][0-9]{0,18}|1[0-7][0-9]{18}|18[0-3][0-9]{17}|"));
    }

    #[test]
    fn every_route_is_documented_once() {
        let doc = document();
        let mut count = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                assert!(ROUTES
                    .iter()
                    .any(|route| route.path == path && route.method.to_lowercase() == *method));
                count += 1;
            }
        }
        assert_eq!(count, ROUTES.len());
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(value: &Value, schemas: &Map<String, Value>) {
            match value {
                Value::Object(object) => {
                    if let Some(Value::String(target)) = object.get("$ref") {
                        let name = target.strip_prefix("#/components/schemas/").unwrap();
                        assert!(schemas.contains_key(name), "dangling $ref {target}");
                    }
                    object.values().for_each(|v| walk(v, schemas));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, schemas)),
                _ => {}
            }
        }
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().unwrap().clone();
        walk(&doc, &schemas);
    }
}
