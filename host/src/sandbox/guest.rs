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

/// A turn that prints the prelude's code object, marshalled, as hex.
pub fn compile_prelude_turn() -> String {
    let prelude = serde_json::Value::String(PRELUDE.to_string()).to_string();
    format!(
        "import marshal, sys\nsys.stdout.write(marshal.dumps(compile({prelude}, '<toolhost>', 'exec', optimize=2)).hex())\nsys.stdout.flush()\n"
    )
}

/// The first turn of a reactor call: installs the prelude unless the instance already has it
/// (a snapshot taken after it ran), then calls `begin` with the call's environment and argv.
/// It binds no name in the user's globals.
pub fn setup_turn(prelude: &Prelude, env: &[(String, String)], argv: &[String]) -> String {
    // JSON objects and arrays of strings are valid Python literals.
    let env_literal = |env: &[(String, String)]| {
        let map: serde_json::Map<String, serde_json::Value> =
            env.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        serde_json::Value::Object(map).to_string()
    };
    if let Prelude::Baked = prelude {
        let argv = serde_json::to_string(argv).unwrap_or_else(|_| "[]".into());
        return format!("__import__('_toolhost').begin({}, {argv})\n", env_literal(env));
    }
    let load = match prelude {
        Prelude::Source => {
            let source = serde_json::Value::String(PRELUDE.to_string()).to_string();
            format!("exec(compile({source}, '<toolhost>', 'exec'), module.__dict__)")
        }
        Prelude::Marshalled(hex) => {
            format!("import marshal\n        exec(marshal.loads(bytes.fromhex('{hex}')), module.__dict__)")
        }
        Prelude::Baked => unreachable!("handled above"),
    };
    let env = env_literal(env);
    let argv = serde_json::to_string(argv).unwrap_or_else(|_| "[]".into());
    format!(
        "def __toolhost_setup(env, argv):\n\
         \x20   import sys\n\
         \x20   module = sys.modules.get('_toolhost')\n\
         \x20   if module is None:\n\
         \x20       module = type(sys)('_toolhost')\n\
         \x20       {load}\n\
         \x20       sys.modules['_toolhost'] = module\n\
         \x20   module.begin(env, argv)\n\
         __toolhost_setup({env}, {argv})\n\
         del __toolhost_setup\n"
    )
}

/// The turn a snapshot is taken after (following the setup turn, which installs the prelude):
/// imports the preload, leaves nothing buffered, and refuses to leave a file open: a file
/// descriptor frozen into a snapshot would name nothing (or something else) in a later call.
/// `preopens` is how many folders the layout preopens (fds 3 and up).
pub fn preload_turn(preload: &[String], preopens: usize) -> String {
    let modules = serde_json::to_string(preload).unwrap_or_else(|_| "[]".into());
    format!(
        "def __toolhost_preload(modules, first_free):\n\
         \x20   import gc, importlib, os, sys\n\
         \x20   for name in modules:\n\
         \x20       importlib.import_module(name)\n\
         \x20   # Warm up what calls use first, so that its one-time setup is in the snapshot.\n\
         \x20   np = sys.modules.get('numpy')\n\
         \x20   if np is not None:\n\
         \x20       repr(np.arange(10).reshape(2, 5).sum(axis=0) / 3)\n\
         \x20   pd = sys.modules.get('pandas')\n\
         \x20   if pd is not None:\n\
         \x20       frame = pd.DataFrame({{'a': range(3), 'b': list('xyz')}})\n\
         \x20       repr(frame); repr(frame.describe()); frame.a.mean(); frame.to_csv()\n\
         \x20   plt = sys.modules.get('matplotlib.pyplot')\n\
         \x20   if plt is not None:\n\
         \x20       import io\n\
         \x20       figure, axes = plt.subplots()\n\
         \x20       axes.plot([0, 1, 2], [0, 1, 4], label='warm-up')\n\
         \x20       axes.set_title('warm-up'); axes.set_xlabel('x'); axes.legend()\n\
         \x20       figure.savefig(io.BytesIO(), format='png')\n\
         \x20       plt.close('all')\n\
         \x20   gc.collect()\n\
         \x20   # Collections in a call would otherwise write to every object's header, copying\n\
         \x20   # the snapshot's pages; the frozen generation is never scanned.\n\
         \x20   gc.freeze()\n\
         \x20   sys.stdout.flush()\n\
         \x20   sys.stderr.flush()\n\
         \x20   def still_open():\n\
         \x20       found = []\n\
         \x20       for fd in range(first_free, first_free + 256):\n\
         \x20           try:\n\
         \x20               os.fstat(fd)\n\
         \x20               found.append(fd)\n\
         \x20           except OSError:\n\
         \x20               pass\n\
         \x20       return found\n\
         \x20   # A loaded font may keep its file open (the prelude reads fonts into memory; if\n\
         \x20   # that did not take, drop the cached fonts), and no descriptor may be frozen.\n\
         \x20   font_manager = sys.modules.get('matplotlib.font_manager')\n\
         \x20   if still_open() and font_manager is not None:\n\
         \x20       font_manager._get_font.cache_clear()\n\
         \x20       gc.collect()\n\
         \x20   if still_open():\n\
         \x20       raise RuntimeError(f'the preload left file descriptors open: {{still_open()}}')\n\
         __toolhost_preload({modules}, {first_free})\n\
         del __toolhost_preload\n",
        first_free = 3 + preopens
    )
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
        assert!(turn.contains("bytes.fromhex('e3')"), "{turn}");
        assert!(turn.contains(r#"__toolhost_setup({"A":"quote \" and \\ and é"}, ["-c"])"#), "{turn}");
    }
}
