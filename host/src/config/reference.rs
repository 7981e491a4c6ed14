//! The configuration reference (`docs/configuration.md`), generated from `FileConfig`'s JSON
//! Schema and doc comments, so the document cannot drift from what the file accepts.

use schemars::schema_for;
use serde_json::{Map, Value};

use super::FileConfig;

/// The reference, in Markdown.
pub fn reference() -> String {
    let schema = schema_for!(FileConfig);
    let root = schema.as_value();
    let defs = root.get("$defs").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut top = Vec::new();
    let mut sections = Vec::new();
    for (key, property) in properties(root) {
        match resolve(property, &defs).filter(|s| s.get("properties").is_some()) {
            Some(section) => sections.push((key, section)),
            None => top.push((key, property)),
        }
    }
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the `FileConfig` type by `toolhost config`; a test fails when this file and \
         the code disagree.\n\n\
         Settings come from flags, then `TOOLHOST_*` environment variables, then the config file \
         (`--config FILE`, else `./toolhost.toml`), then the defaults. Every section and key is \
         optional; an unknown key is an error that names it. `toolhost.example.toml` shows every \
         key with its default.\n",
    );
    out.push_str("\n## Top level\n\n");
    table(&mut out, &top, &defs);
    for (name, section) in sections {
        out.push_str(&format!("\n## `[{name}]`\n\n"));
        if let Some(text) = section.get("description").and_then(Value::as_str) {
            out.push_str(&format!("{}\n\n", one_line(text)));
        }
        let fields = properties(&section);
        let (tables, scalars): (Vec<_>, Vec<_>) =
            fields.into_iter().partition(|(_, p)| array_of_tables(p, &defs).is_some());
        if !scalars.is_empty() {
            table(&mut out, &scalars, &defs);
        }
        for (key, property) in tables {
            let item = array_of_tables(property, &defs).unwrap_or_default();
            if !out.ends_with("\n\n") {
                out.push('\n');
            }
            out.push_str(&format!("### `[[{name}.{key}]]`\n\n"));
            if let Some(text) = property.get("description").and_then(Value::as_str) {
                out.push_str(&format!("{}\n\n", one_line(text)));
            }
            table(&mut out, &properties(&item), &defs);
        }
    }
    out
}

fn properties(schema: &Value) -> Vec<(String, &Value)> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.iter().map(|(k, v)| (k.clone(), v)).collect())
        .unwrap_or_default()
}

/// The schema behind a `$ref` (or the schema itself).
fn resolve(schema: &Value, defs: &Map<String, Value>) -> Option<Value> {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => defs.get(reference.trim_start_matches("#/$defs/")).cloned(),
        None => Some(schema.clone()),
    }
}

/// The item schema of an array of objects (`[[section.key]]`).
fn array_of_tables(schema: &Value, defs: &Map<String, Value>) -> Option<Value> {
    let items = schema.get("items")?;
    resolve(items, defs).filter(|item| item.get("properties").is_some())
}

fn table(out: &mut String, fields: &[(String, &Value)], defs: &Map<String, Value>) {
    out.push_str("| key | type | what |\n|---|---|---|\n");
    for (key, property) in fields {
        let description = property.get("description").and_then(Value::as_str).map(one_line).unwrap_or_default();
        out.push_str(&format!("| `{key}` | {} | {} |\n", type_of(property, defs), description));
    }
}

/// A short type name: `integer`, `list of string`, `"text" or "json"`.
fn type_of(schema: &Value, defs: &Map<String, Value>) -> String {
    let schema = resolve(schema, defs).unwrap_or(Value::Null);
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let named: Vec<String> =
            any.iter().filter(|s| s.get("type") != Some(&Value::from("null"))).map(|s| type_of(s, defs)).collect();
        return named.join(" or ");
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(" or ");
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let values: Vec<String> = options
            .iter()
            .filter_map(|o| o.get("const").or_else(|| o.get("enum").and_then(|e| e.get(0))))
            .map(|v| format!("`{v}`"))
            .collect();
        return values.join(" or ");
    }
    let kinds: Vec<&str> = match schema.get("type") {
        Some(Value::String(kind)) => vec![kind.as_str()],
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).filter(|k| *k != "null").collect(),
        _ => Vec::new(),
    };
    match kinds.as_slice() {
        ["array"] => format!("list of {}", schema.get("items").map_or("values".into(), |i| type_of(i, defs))),
        ["number"] => "number".into(),
        [kind] => (*kind).to_string(),
        _ => "value".into(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_reference_is_generated_from_the_code() {
        let committed = include_str!("../../../docs/configuration.md");
        assert!(
            committed == reference(),
            "docs/configuration.md is out of date: run `cargo run --release -- config > docs/configuration.md`"
        );
    }

    #[test]
    fn the_example_config_holds_every_key_and_loads() {
        let example = include_str!("../../../toolhost.example.toml");
        let parsed: FileConfig = toml::from_str(example).expect("toolhost.example.toml parses with no unknown key");
        let global = crate::cli::GlobalArgs { config: None, cache_dir: None, log_format: None, log: None };
        super::super::Settings::merge(&global, &super::super::Flags::default(), parsed).expect("and is valid");
        let generated = reference();
        for line in generated.lines().filter(|l| l.starts_with("| `")) {
            let key = line.trim_start_matches("| `").split('`').next().unwrap_or_default();
            assert!(
                example.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
                "toolhost.example.toml does not show `{key}`"
            );
        }
    }
}
