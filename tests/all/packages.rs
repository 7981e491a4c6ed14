//! The scientific stack works inside the sandbox: numpy, pandas, matplotlib (plots land in
//! /workspace/outputs/), tempfile and openpyxl (a writable TMPDIR), the notebook echo.

use crate::support::{PYTHON, assert_ok, run, run_with, with_timeout, workspace};

#[tokio::test]
async fn print_prints() {
    let outcome = run("print(1+1)").await;
    assert_ok(&outcome);
    assert_eq!(outcome.stdout, "2\n");
    assert_eq!(outcome.stderr, "");
    assert_eq!(outcome.exit_code, Some(0));
    assert!(outcome.files.is_empty());
}

#[tokio::test]
async fn a_final_expression_is_echoed_like_a_notebook_cell() {
    let outcome = run("x = 20\nx + 22").await;
    assert_ok(&outcome);
    assert_eq!(outcome.stdout, "42\n");
    let none = run("x = None\nx").await;
    assert_eq!(none.stdout, "", "None is not echoed");
}

#[tokio::test]
async fn pandas_sums_through_the_echo() {
    let outcome = run("import pandas as pd; pd.DataFrame({\"a\":[1,2]}).a.sum()").await;
    assert_ok(&outcome);
    assert!(outcome.stdout.trim_end().ends_with('3'), "{}", outcome.stdout);
}

#[tokio::test]
async fn numpy_computes() {
    let outcome =
        run("import numpy as np\nprint(np.arange(10**6, dtype=np.int64).sum(), np.linalg.det(np.eye(3)))").await;
    assert_ok(&outcome);
    assert_eq!(outcome.stdout, "499999500000 1.0\n");
}

#[tokio::test]
async fn plt_show_saves_the_figure_into_outputs() {
    let (_dir, ws) = workspace();
    let code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()";
    let outcome = run_with(code, PYTHON, &ws, with_timeout(60.0)).await;
    assert_ok(&outcome);
    let figure = outcome.files.iter().find(|f| f.path.starts_with("outputs/")).expect("a figure in outputs/");
    assert_eq!(figure.mime_type, "image/png");
    assert_eq!(figure.uri, format!("file:///workspace/{}", figure.path));
    let (png, _) = ws.read(&figure.path, 0, None).expect("the png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "{} bytes", png.len());
}

#[tokio::test]
async fn figures_left_open_are_saved_like_a_notebook_shows_them() {
    let (_dir, ws) = workspace();
    let code = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.bar(['a', 'b'], [3, 5])";
    let outcome = run_with(code, PYTHON, &ws, with_timeout(60.0)).await;
    assert_ok(&outcome);
    let figures: Vec<_> = outcome.files.iter().filter(|f| f.path.starts_with("outputs/figure-")).collect();
    assert_eq!(figures.len(), 1, "{:?}", outcome.files);
}

#[tokio::test]
async fn tempfile_and_openpyxl_work_with_the_scratch_folder() {
    let (_dir, ws) = workspace();
    let code = "\
import tempfile, openpyxl
with tempfile.NamedTemporaryFile('w+', suffix='.txt') as f:
    f.write('scratch'); f.flush(); f.seek(0); print(f.read())
wb = openpyxl.Workbook()
wb.active['A1'] = 'hello'
wb.save('book.xlsx')
print(openpyxl.load_workbook('book.xlsx').active['A1'].value)";
    let outcome = run_with(code, PYTHON, &ws, with_timeout(60.0)).await;
    assert_ok(&outcome);
    assert_eq!(outcome.stdout, "scratch\nhello\n");
    let book = outcome.files.iter().find(|f| f.path == "book.xlsx").expect("book.xlsx listed");
    assert_eq!(book.mime_type, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet");
}

#[tokio::test]
async fn files_the_call_writes_are_listed_with_their_uri() {
    let (_dir, ws) = workspace();
    ws.write("untouched.txt", b"old").expect("seed");
    let code = "import os\nos.makedirs('data', exist_ok=True)\nopen('data/out.csv', 'w').write('a,b\\n1,2\\n')";
    let outcome = run_with(code, PYTHON, &ws, with_timeout(10.0)).await;
    assert_ok(&outcome);
    let paths: Vec<_> =
        outcome.files.iter().map(|f| (f.path.as_str(), f.size, f.mime_type.as_str(), f.uri.as_str())).collect();
    assert_eq!(paths, [("data/out.csv", 8, "text/csv", "file:///workspace/data/out.csv")]);
}
