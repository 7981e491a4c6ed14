//! `toolhost runtime fetch|verify|list`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::RuntimeCommand;
use crate::config::Settings;
use crate::progress::Progress;
use crate::runtime::{self, Cache, FileRole, manifest};
use crate::sandbox;

pub fn run(settings: Settings, command: RuntimeCommand) -> Result<ExitCode> {
    let cache = Cache::new(&settings.cache_dir);
    let progress = Progress::auto();
    match command {
        RuntimeCommand::Fetch { names, compile } => {
            let names = or_all(names);
            for name in &names {
                let manifest = super::known_runtime(name)?;
                let ready = match runtime::ensure(&manifest, &cache, &progress) {
                    Ok(ready) => ready,
                    Err(e) => {
                        tracing::warn!("{e:#}; fetching {name} again");
                        runtime::fetch::fetch(&manifest, &cache, &progress)?
                    }
                };
                println!("{name}: ready in {}", ready.dir.display());
            }
            if compile {
                super::start_sandbox(&settings, &names, &progress)?;
                println!("compiled: {}", names.join(", "));
            }
        }
        RuntimeCommand::Verify { names } => {
            for name in or_all(names) {
                let manifest = super::known_runtime(&name)?;
                let ready = runtime::verify(&manifest, &cache, &progress)?;
                println!("{name}: every file matches its pinned sha256 ({})", ready.dir.display());
            }
        }
        RuntimeCommand::List => {
            println!("{:<12} {:<28} {:<10} {:<9} DESCRIPTION", "NAME", "SOURCE", "INSTALLED", "COMPILED");
            for manifest in manifest::builtin() {
                let installed = runtime::is_installed(&manifest, &cache);
                let compiled = manifest
                    .file(FileRole::Module)
                    .map(|module| sandbox::is_compiled(&settings.sandbox, &module.sha256, &cache))
                    .transpose()?
                    .unwrap_or(false);
                println!(
                    "{:<12} {:<28} {:<10} {:<9} {}",
                    manifest.name,
                    manifest.requirement(),
                    if installed { "yes" } else { "no" },
                    if compiled { "yes" } else { "no" },
                    manifest.description
                );
            }
            println!("\ncache: {}", cache.root().display());
        }
        RuntimeCommand::Prune { dry_run } => {
            let installed: Vec<_> = manifest::builtin()
                .iter()
                .filter(|m| runtime::is_installed(m, &cache))
                .map(|m| runtime::ensure(m, &cache, &progress))
                .collect::<Result<_>>()?;
            let removed = sandbox::prune(&settings.sandbox, &installed, &cache, dry_run)?;
            let bytes: u64 = removed.iter().map(|(_, size)| size).sum();
            for (path, _) in &removed {
                println!("{} {}", if dry_run { "would remove" } else { "removed" }, path.display());
            }
            println!("{} files, {} MB{}", removed.len(), bytes / 1_000_000, if dry_run { " (dry run)" } else { "" });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn or_all(names: Vec<String>) -> Vec<String> {
    if names.is_empty() { manifest::builtin().into_iter().map(|m| m.name).collect() } else { names }
}
