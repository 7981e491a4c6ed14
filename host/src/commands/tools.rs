//! `toolhost tools check`: loads the org tools as the server would and says what it found.

use std::process::ExitCode;

use anyhow::Result;

use crate::config::Settings;
use crate::tools::org;

pub fn check(settings: &Settings) -> Result<ExitCode> {
    let app = &settings.app;
    let roots: Vec<String> = app.roots.iter().map(|r| r.name.clone()).collect();
    let dir = &app.tools_dir;
    if !dir.is_dir() {
        println!("{} does not exist: no org tools (make one folder per tool there)", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let loaded = org::load_dir(dir, &settings.sandbox.limits, &roots);
    for tool in &loaded.tools {
        let definition = crate::tools::Tool::definition(tool);
        println!("ok       {}: {}", definition.name, definition.title);
    }
    for unavailable in &loaded.unavailable {
        println!("offline  {unavailable}");
    }
    for problem in &loaded.problems {
        println!("skipped  {problem}");
    }
    println!(
        "{} loaded, {} waiting for a resource root, {} skipped, from {}",
        loaded.tools.len(),
        loaded.unavailable.len(),
        loaded.problems.len(),
        dir.display()
    );
    Ok(if loaded.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
