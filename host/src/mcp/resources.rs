//! Resources: the session's default workspace's files as `file:///workspace/<path>`, any other
//! workspace of the principal's as `file:///workspaces/<handle>/<path>`, and each configured
//! read-only root's files as `file:///<root>/<path>`; text as text, anything else as a blob.

use base64::Engine;
use rmcp::ErrorData as McpError;
use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
};
use serde_json::json;

use crate::app::App;
use crate::sessions::Session;
use crate::workspace::{self, Kind, Workspace};

/// Resources per `resources/list` page.
const PAGE: usize = 500;
/// The most bytes a resource read returns (base64 adds a third; messages stay under 1 MiB).
pub const MAX_RESOURCE_BYTES: u64 = 384 << 10;

/// Where a resource URI points.
enum Target<'a> {
    /// A workspace's file: the one a handle names, else the session's default workspace.
    Workspace(Option<String>, String),
    Root(&'a crate::app::Root, String),
}

pub fn list(app: &App, session: &Session, cursor: Option<String>) -> Result<ListResourcesResult, McpError> {
    let mut all = Vec::new();
    if let Some(space) = session.default_workspace() {
        collect(space.files(), "workspace", &mut all);
    }
    for root in &app.roots {
        collect(&root.folder, &root.name, &mut all);
    }
    let start: usize = match cursor {
        Some(cursor) => {
            cursor.parse().map_err(|_| McpError::invalid_params(format!("invalid cursor {cursor:?}"), None))?
        }
        None => 0,
    };
    let page: Vec<Resource> = all.iter().skip(start).take(PAGE).cloned().collect();
    let mut result = ListResourcesResult::with_all_items(page);
    if start + PAGE < all.len() {
        result.next_cursor = Some((start + PAGE).to_string());
    }
    Ok(result)
}

fn collect(folder: &Workspace, prefix: &str, into: &mut Vec<Resource>) {
    let Ok(index) = folder.index() else { return };
    for (path, entry) in index.entries.iter().filter(|(_, e)| e.kind == Kind::File) {
        into.push(
            Resource::new(workspace::uri_under(prefix, path), path.clone())
                .with_mime_type(mime_of(path))
                .with_size(entry.size),
        );
    }
}

pub fn templates(app: &App) -> ListResourceTemplatesResult {
    let mut templates = vec![
        ResourceTemplate::new("file:///workspace/{path}", "workspace file")
            .with_description("A file in this session's workspace (/workspace in code_interpreter)."),
        ResourceTemplate::new("file:///workspaces/{workspace}/{path}", "file of a workspace by handle")
            .with_description("A file in one of your workspaces, named by its handle (ws_...)."),
    ];
    for root in &app.roots {
        templates.push(
            ResourceTemplate::new(format!("file:///{}/{{path}}", root.name), format!("{} file", root.name))
                .with_description(format!(
                    "A read-only file of the {} root (/{} in code_interpreter).",
                    root.name, root.name
                )),
        );
    }
    ListResourceTemplatesResult::with_all_items(templates)
}

pub fn read(app: &App, session: &Session, uri: &str) -> Result<ReadResourceResult, McpError> {
    let space;
    let (folder, path) = match target(app, uri)? {
        Target::Workspace(Some(handle), path) => {
            space = session.workspace(Some(&handle)).map_err(|e| not_found(uri, &e.to_string()))?;
            (space.files(), path)
        }
        Target::Workspace(None, path) => {
            space = session.default_workspace().ok_or_else(|| {
                not_found(
                    uri,
                    "this session has no workspace yet (without a session, name one: file:///workspaces/<handle>/<path>)",
                )
            })?;
            (space.files(), path)
        }
        Target::Root(root, path) => (&root.folder, path),
    };
    let (bytes, size) =
        folder.read(&path, 0, Some(MAX_RESOURCE_BYTES + 1)).map_err(|e| not_found(uri, &e.to_string()))?;
    if size > MAX_RESOURCE_BYTES {
        return Err(McpError::invalid_params(
            format!(
                "{uri} has {size} bytes, more than a resource read returns ({} KiB); use the read_file tool with offset and length",
                MAX_RESOURCE_BYTES >> 10
            ),
            Some(json!({"uri": uri, "size": size})),
        ));
    }
    let mime = mime_of(&path);
    let contents = match String::from_utf8(bytes) {
        Ok(text) => ResourceContents::text(text, uri).with_mime_type(mime),
        Err(binary) => ResourceContents::blob(base64::engine::general_purpose::STANDARD.encode(binary.as_bytes()), uri)
            .with_mime_type(mime),
    };
    Ok(ReadResourceResult::new(vec![contents]))
}

/// Checks a `resources/subscribe` URI. Any URI that could name a resource later is accepted,
/// whether or not it exists now (a workspace file that appears later sends `updated`); a
/// `file:` URI must name a path in the workspace or a configured root. Refused: text that is
/// no absolute URI, and `file:` paths that can never exist here (`..`, an unknown root).
pub fn check_subscription(app: &App, uri: &str) -> Result<(), McpError> {
    let scheme = uri.split_once(':').map(|(scheme, _)| scheme).unwrap_or_default();
    let valid_scheme = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return Err(McpError::invalid_params(
            format!(
                "cannot subscribe to {uri:?}: it is not an absolute URI (workspace files are file:///workspace/<path>)"
            ),
            Some(json!({"uri": uri})),
        ));
    }
    if scheme.eq_ignore_ascii_case("file") {
        target(app, uri).map_err(|e| McpError::invalid_params(format!("cannot subscribe: {}", e.message), e.data))?;
    }
    Ok(())
}

fn target<'a>(app: &'a App, uri: &str) -> Result<Target<'a>, McpError> {
    let rest = uri
        .strip_prefix("file:///")
        .ok_or_else(|| not_found(uri, "resource URIs look like file:///workspace/<path>"))?;
    let (first, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (handle, path) = match first {
        "workspaces" => {
            let (handle, path) = path.split_once('/').unwrap_or((path, ""));
            (Some(handle.to_string()), path)
        }
        _ => (None, path),
    };
    let path = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| not_found(uri, "the path is not UTF-8"))?
        .into_owned();
    workspace::resolve(&path).map_err(|e| not_found(uri, &e.to_string()))?;
    if handle.is_some() || first == "workspace" {
        return Ok(Target::Workspace(handle, path));
    }
    match app.root(first) {
        Some(root) => Ok(Target::Root(root, path)),
        None => Err(not_found(uri, "it is neither in the workspace nor in a configured root")),
    }
}

fn mime_of(path: &str) -> String {
    mime_guess::from_path(path).first_or_octet_stream().essence_str().to_string()
}

fn not_found(uri: &str, why: &str) -> McpError {
    McpError::resource_not_found(format!("no resource {uri}: {why}"), Some(json!({"uri": uri})))
}
