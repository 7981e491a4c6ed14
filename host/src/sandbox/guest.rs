//! The Python the host hands the guest besides the user's code: the prelude module
//! (`guest-runtimes/python/prelude.py`), the per-call setup turn that installs it and calls its
//! `begin`, the closing turn, and the runner command runtimes start with. Also the tidying of
//! tracebacks so they name the user's code `<code>`.

/// The prelude, run as the module `_toolhost` in every fresh instance.
pub const PRELUDE: &str = include_str!("../../../guest-runtimes/python/prelude.py");

/// The program a command runtime is started with: `-c RUNNER PRELUDE SETUP CODE`.
pub const COMMAND_RUNNER: &str = include_str!("../../../guest-runtimes/python-lite/runner.py");

/// Run after the user's code: saves figures left open.
pub const CLOSING_TURN: &str = "__import__('_toolhost').end()";

/// The setup a call passes to the prelude's `begin`: its environment and argv, as JSON.
pub fn setup_json(env: &[(String, String)], argv: &[String]) -> String {
    let env: serde_json::Map<String, serde_json::Value> =
        env.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    serde_json::json!({ "env": env, "argv": argv }).to_string()
}

/// How a reactor instance gets the prelude module.
#[derive(Debug, Clone)]
pub enum Prelude {
    /// Compiled from source in the setup turn (only to compile it once, see `COMPILE_PRELUDE`).
    Source,
    /// The code object, marshalled by this runtime's own CPython once per process, as hex:
    /// unmarshalling costs a fraction of compiling ~150 lines on every call.
    Marshalled(String),
    /// Already in the instance: the module is part of a pre-initialized snapshot.
    Baked,
}

/// Installs the prelude in an instance that lacks it, then begins the call.
const SETUP: &str = include_str!("../../../guest-runtimes/python/setup.py");
/// Imports and warms the preload before a snapshot.
const PRELOAD: &str = include_str!("../../../guest-runtimes/python/preload.py");
/// Closes the files a call left open, before its state is saved.
const CLOSE_FILES: &str = include_str!("../../../guest-runtimes/python/close_files.py");
/// Prints the prelude's code object, marshalled, as hex.
const COMPILE_PRELUDE: &str = include_str!("../../../guest-runtimes/python/compile_prelude.py");

/// A turn that runs `script` (which defines `function`), calls it with `params` as one JSON
/// value (a JSON object of strings, numbers and lists is a Python literal), and deletes it.
fn turn(script: &str, function: &str, params: &serde_json::Value) -> String {
    format!("{script}\n{function}({params})\ndel {function}\n")
}

/// A turn that prints the prelude's code object, marshalled, as hex.
pub fn compile_prelude_turn() -> String {
    turn(COMPILE_PRELUDE, "__toolhost_compile_prelude", &serde_json::json!({ "source": PRELUDE }))
}

/// A turn that closes the Python objects holding the descriptors `fds`, then the descriptors.
pub fn close_files_turn(fds: &[u32]) -> String {
    turn(CLOSE_FILES, "__toolhost_close_files", &serde_json::json!(fds))
}

/// The first turn of a reactor call: installs the prelude unless the instance already has it
/// (a snapshot taken after it ran), then calls `begin` with the call's environment and argv.
/// It binds no name in the user's globals.
pub fn setup_turn(prelude: &Prelude, env: &[(String, String)], argv: &[String]) -> String {
    let env: serde_json::Map<String, serde_json::Value> =
        env.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let mut params = serde_json::json!({ "env": env, "argv": argv });
    match prelude {
        // The hot path: one call, nothing to compile but this line.
        Prelude::Baked => return format!("__import__('_toolhost').begin({}, {})\n", params["env"], params["argv"]),
        Prelude::Source => params["source"] = PRELUDE.into(),
        Prelude::Marshalled(hex) => params["marshalled"] = hex.as_str().into(),
    }
    turn(SETUP, "__toolhost_setup", &params)
}

/// The turn a snapshot is taken after (following the setup turn, which installs the prelude):
/// imports and warms the preload, and refuses to leave a file open (`preload.py`). `preopens`
/// is how many folders the layout preopens (fds 3 and up).
pub fn preload_turn(preload: &[String], preopens: usize) -> String {
    turn(PRELOAD, "__toolhost_preload", &serde_json::json!({ "modules": preload, "first_free": 3 + preopens }))
}

/// Whether `name` is a dotted Python name (`numpy`, `matplotlib.pyplot`, `os.error`).
pub fn is_dotted_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            part.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
}

/// Tidies a traceback for the user: the reactor's pseudo-file `<turn N>` becomes `<code>`, and
/// the frame of the parser `turn` calls (shown above a SyntaxError) is dropped.
pub fn tidy_traceback(stderr: &str) -> String {
    let renamed = rename_turns(stderr);
    if !renamed.contains("/ast.py\", line ") {
        return renamed;
    }
    let lines: Vec<&str> = renamed.split_inclusive('\n').collect();
    let mut out = String::with_capacity(renamed.len());
    for (i, line) in lines.iter().enumerate() {
        let parser_frame = line.starts_with("  File \"")
            && line.contains("/ast.py\", line ")
            && line.trim_end().ends_with(", in parse");
        let before_code = lines.get(i + 1).is_some_and(|next| next.starts_with("  File \"<code>\""));
        if !(parser_frame && before_code) {
            out.push_str(line);
        }
    }
    out
}

fn rename_turns(stderr: &str) -> String {
    const OPEN: &str = "\"<turn ";
    if !stderr.contains(OPEN) {
        return stderr.to_string();
    }
    let mut out = String::with_capacity(stderr.len());
    let mut rest = stderr;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(">\"") {
            out.push_str("\"<code>\"");
            rest = &after[digits + 2..];
        } else {
            out.push_str(OPEN);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_names_become_code() {
        let tb = "  File \"<turn 3>\", line 2, in <module>\n  File \"<turn x>\", line 1\n";
        assert_eq!(tidy_traceback(tb), "  File \"<code>\", line 2, in <module>\n  File \"<turn x>\", line 1\n");
    }

    #[test]
    fn the_parser_frame_above_a_syntax_error_is_dropped() {
        let tb = "Traceback (most recent call last):\n  File \"/usr/local/lib/python315.zip/ast.py\", line 46, in parse\n  File \"<turn 2>\", line 1\n    x = (\n        ^\nSyntaxError: '(' was never closed\n";
        assert_eq!(
            tidy_traceback(tb),
            "Traceback (most recent call last):\n  File \"<code>\", line 1\n    x = (\n        ^\nSyntaxError: '(' was never closed\n"
        );
    }

    #[test]
    fn the_setup_is_valid_json_inside_a_python_literal() {
        let env = vec![("A".to_string(), "quote \" and \\ and é".to_string())];
        let json = setup_json(&env, &["-c".into()]);
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(parsed["env"]["A"], "quote \" and \\ and é");
        let turn = setup_turn(&Prelude::Marshalled("e3".into()), &env, &["-c".into()]);
        assert!(turn.starts_with(SETUP), "{turn}");
        assert!(
            turn.ends_with(
                r#"__toolhost_setup({"argv":["-c"],"env":{"A":"quote \" and \\ and é"},"marshalled":"e3"})
del __toolhost_setup
"#
            ),
            "{turn}"
        );
        let baked = setup_turn(&Prelude::Baked, &env, &["-c".into()]);
        assert_eq!(baked, "__import__('_toolhost').begin({\"A\":\"quote \\\" and \\\\ and é\"}, [\"-c\"])\n");
    }
}
