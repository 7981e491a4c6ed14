//! A snapshot freezes the interpreter after numpy, pandas and matplotlib were imported; what
//! must differ per call is renewed before the code runs: random generators, the environment,
//! argv, the current directory, the temp folder, matplotlib's state.

use crate::support::{PYTHON, assert_ok, run, run_with, with_timeout, workspace};

#[tokio::test]
async fn the_scientific_stack_is_already_imported() {
    let outcome =
        run("import sys\nprint(all(m in sys.modules for m in ['numpy', 'pandas', 'matplotlib.pyplot']))").await;
    assert_ok(&outcome);
    assert_eq!(outcome.stdout, "True\n", "the snapshot holds the preload");
}

#[tokio::test]
async fn two_fresh_instances_draw_different_random_numbers() {
    let code = "import random, numpy as np\nprint(random.random(), np.random.random(), np.random.default_rng().random(), np.random.randint(1 << 30))";
    let (first, second) = tokio::join!(run(code), run(code));
    assert_ok(&first);
    assert_ok(&second);
    let (a, b): (Vec<&str>, Vec<&str>) =
        (first.stdout.split_whitespace().collect(), second.stdout.split_whitespace().collect());
    assert_eq!(a.len(), 4);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_ne!(x, y, "generator {i} repeated itself across instances: {a:?} {b:?}");
    }
}

#[tokio::test]
async fn each_call_sees_its_own_environment() {
    let code = "import os, sys, tempfile\nprint(os.environ['TOOLHOST_CALL_ID'], sys.argv, os.getcwd(), tempfile.gettempdir(), os.environ['TMPDIR'], os.environ['HOME'])";
    let (first, second) = tokio::join!(run(code), run(code));
    assert_ok(&first);
    let a: Vec<&str> = first.stdout.split_whitespace().collect();
    let b: Vec<&str> = second.stdout.split_whitespace().collect();
    assert!(a[0].starts_with("call-") && b[0].starts_with("call-"), "{a:?}");
    assert_ne!(a[0], b[0], "each call has its own id in os.environ");
    assert_eq!(a[1..], ["['-c']", "/workspace", "/tmp", "/tmp", "/tmp"]);
}

#[tokio::test]
async fn matplotlib_state_does_not_carry_over() {
    let (_dir, ws) = workspace();
    let first = "import matplotlib as mpl, matplotlib.pyplot as plt\nmpl.rcParams['lines.linewidth'] = 9\nplt.figure(); plt.figure()\nprint(len(plt.get_fignums()))";
    let outcome = run_with(first, PYTHON, &ws, with_timeout(60.0)).await;
    assert_eq!(outcome.stdout, "2\n");
    let second = "import matplotlib as mpl, matplotlib.pyplot as plt\nprint(len(plt.get_fignums()), mpl.rcParams['lines.linewidth'], mpl.get_backend().lower())";
    let outcome = run_with(second, PYTHON, &ws, with_timeout(60.0)).await;
    assert_ok(&outcome);
    assert_eq!(outcome.stdout, "0 1.5 agg\n");
}

#[tokio::test]
async fn text_renders_after_the_snapshot() {
    // Fonts were closed before the snapshot (an open file must not be frozen): calls reopen them.
    let (_dir, ws) = workspace();
    let code = "import matplotlib, matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.set_title('héllo ✓')\nax.text(0.5, 0.5, 'text')\n\
                for ext in ['png', 'pdf', 'ps', 'svg']:\n    fig.savefig('t.' + ext)\n\
                matplotlib.rcParams['pdf.fonttype'] = 42\nmatplotlib.rcParams['ps.fonttype'] = 42\nfig.savefig('t42.pdf')\nfig.savefig('t42.ps')\nprint('ok')";
    let outcome = run_with(code, PYTHON, &ws, with_timeout(60.0)).await;
    assert_ok(&outcome);
    let paths: Vec<&str> = outcome.files.iter().map(|f| f.path.as_str()).collect();
    for file in ["t.png", "t.pdf", "t.ps", "t.svg", "t42.pdf", "t42.ps"] {
        assert!(paths.contains(&file), "{file} missing: {paths:?}");
    }
}
