//! `tool.toml`: what an org tool declares about itself, read and checked before the tool is
//! offered. Every problem is a sentence naming the key at fault.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::sandbox::Limits;

/// The manifest file every tool folder holds.
pub const MANIFEST: &str = "tool.toml";
/// The script every tool folder holds.
pub const SCRIPT: &str = "main.py";

/// `tool.toml`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Default: the folder's name.
    pub name: Option<String>,
    /// Default: the name.
    pub title: Option<String>,
    pub description: String,
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    #[serde(default)]
    pub annotations: Annotations,
    #[serde(default)]
    pub limits: ToolLimits,
    /// Configured resource roots the tool sees, read-only, at `/<name>`.
    #[serde(default)]
    pub roots: Vec<String>,
    #[serde(default)]
    pub workspace: WorkspaceAccess,
    /// Guest code may call it by default (`from host import tools`).
    #[serde(default)]
    pub code_mode: bool,
}

/// MCP annotations; `read_only_hint` defaults to whether the tool's workspace is read-only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Annotations {
    pub read_only_hint: Option<bool>,
    #[serde(default)]
    pub destructive_hint: bool,
    #[serde(default)]
    pub idempotent_hint: bool,
    #[serde(default)]
    pub open_world_hint: bool,
}

/// Limits tighter than the server's; a looser one is held to the server's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolLimits {
    pub timeout_s: Option<f64>,
    pub memory_mb: Option<u64>,
    pub fuel: Option<u64>,
}

/// How the tool sees the workspace of the call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkspaceAccess {
    #[default]
    ReadOnly,
    ReadWrite,
}

impl Manifest {
    /// Reads and parses `folder/tool.toml`.
    pub fn read(folder: &Path) -> Result<Manifest, String> {
        let path = folder.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("missing {MANIFEST}"),
            _ => format!("cannot read {MANIFEST}: {e}"),
        })?;
        toml::from_str(&text).map_err(|e| format!("invalid {MANIFEST}: {}", e.to_string().trim_end()))
    }

    /// The tool's name: `name`, else the folder's, which must suit a Python identifier.
    pub fn name(&self, folder: &Path) -> Result<String, String> {
        let name = match &self.name {
            Some(name) => name.clone(),
            None => folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        let valid = name.len() <= 64
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "the tool name {name:?} must start with a letter and hold only letters, digits and '_' \
                 (at most 64): guest code calls it as tools.{name}(...)"
            ));
        }
        Ok(name)
    }

    /// The server's limits narrowed to this tool's.
    pub fn limits(&self, ceiling: &Limits) -> Result<Limits, String> {
        let mut limits = *ceiling;
        if let Some(timeout) = self.limits.timeout_s {
            let timeout = Duration::try_from_secs_f64(timeout)
                .ok()
                .filter(|t| !t.is_zero())
                .ok_or_else(|| format!("limits.timeout_s must be a positive number of seconds, not {timeout}"))?;
            limits.timeout = timeout.min(ceiling.timeout);
        }
        if let Some(memory_mb) = self.limits.memory_mb {
            if memory_mb < 64 {
                return Err(format!("limits.memory_mb must be at least 64, not {memory_mb}"));
            }
            limits.memory_bytes = (memory_mb << 20).min(ceiling.memory_bytes);
        }
        if let Some(fuel) = self.limits.fuel {
            if fuel == 0 {
                return Err("limits.fuel must be positive".into());
            }
            limits.fuel = fuel.min(ceiling.fuel);
        }
        Ok(limits)
    }
}

/// Checks that a manifest's schema is a JSON Schema for an object that compiles (draft
/// 2020-12); `key` names it in the message.
pub fn object_schema(key: &str, schema: &Value) -> Result<jsonschema::Validator, String> {
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err(format!("{key} must describe an object: add type = \"object\""));
    }
    jsonschema::draft202012::new(schema).map_err(|e| format!("{key} does not compile: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Result<Manifest, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_minimal_manifest_takes_its_name_from_the_folder() {
        let m = manifest("description = \"d\"\n[input_schema]\ntype = \"object\"\n").expect("valid");
        assert_eq!(m.name(Path::new("tools/csv_profile")).expect("name"), "csv_profile");
        assert_eq!(m.workspace, WorkspaceAccess::ReadOnly);
        assert!(m.name(Path::new("tools/csv-profile")).expect_err("dash").contains("tools.csv-profile"));
    }

    #[test]
    fn unknown_keys_and_bad_limits_are_refused() {
        let unknown = manifest("description = \"d\"\ninput_schema = {}\ncolour = \"red\"\n").expect_err("unknown");
        assert!(unknown.contains("colour"), "{unknown}");
        let m = manifest("description = \"d\"\ninput_schema = {}\n[limits]\ntimeout_s = 500\nmemory_mb = 128\n")
            .expect("valid");
        let limits = m.limits(&Limits::default()).expect("limits");
        assert_eq!(limits.timeout, Limits::default().timeout, "held to the server's");
        assert_eq!(limits.memory_bytes, 128 << 20);
        let zero = manifest("description = \"d\"\ninput_schema = {}\n[limits]\ntimeout_s = 0\n").expect("parses");
        assert!(zero.limits(&Limits::default()).expect_err("zero").contains("timeout_s"));
    }

    #[test]
    fn schemas_must_describe_objects_and_compile() {
        assert!(object_schema("input_schema", &serde_json::json!({"type": "array"})).is_err());
        let broken = serde_json::json!({"type": "object", "properties": {"a": {"type": "nonsense"}}});
        let message = object_schema("input_schema", &broken).expect_err("does not compile");
        assert!(message.starts_with("input_schema does not compile"), "{message}");
    }
}
