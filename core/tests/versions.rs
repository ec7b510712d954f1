//! One version for every package: the workspace's (`Cargo.toml`), which the
//! Rust crates and the Python package (maturin reads it) take as theirs, is
//! the version written in the Node, Elixir and Maven manifests, the C
//! header and the CHANGELOG's newest entry; and one licence, the
//! repository's, inside every package that ships alone.

use std::path::Path;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text between the first `before` and the next `after` in `text`.
fn between<'a>(text: &'a str, before: &str, after: &str) -> &'a str {
    let start = text.find(before).unwrap_or_else(|| panic!("no {before:?}")) + before.len();
    let len = text[start..]
        .find(after)
        .unwrap_or_else(|| panic!("no {after:?}"));
    &text[start..start + len]
}

#[test]
fn every_package_has_the_workspace_version() {
    let found = [
        (
            "bindings/node/package.json",
            between(&read("bindings/node/package.json"), "\"version\": \"", "\"").to_string(),
        ),
        (
            "bindings/elixir/mix.exs",
            between(
                &read("bindings/elixir/mix.exs"),
                "app: :relaybox,\n      version: \"",
                "\"",
            )
            .to_string(),
        ),
        (
            "bindings/jvm/pom.xml",
            between(
                &read("bindings/jvm/pom.xml"),
                "</artifactId>\n  <version>",
                "<",
            )
            .to_string(),
        ),
        (
            "bindings/jvm/spring-boot-starter/pom.xml",
            between(
                &read("bindings/jvm/spring-boot-starter/pom.xml"),
                "</artifactId>\n  <version>",
                "<",
            )
            .to_string(),
        ),
        (
            "bindings/c/include/relaybox.h",
            between(
                &read("bindings/c/include/relaybox.h"),
                "library version (`\"",
                "\"",
            )
            .to_string(),
        ),
        (
            "CHANGELOG.md",
            between(&read("CHANGELOG.md"), "\n## ", " ").to_string(),
        ),
    ];
    for (file, version) in found {
        assert_eq!(version, VERSION, "{file}");
    }
    assert!(read("bindings/python/pyproject.toml").contains("dynamic = [\"version\"]"));
}

#[test]
fn every_package_that_ships_alone_carries_the_licence() {
    let licence = read("LICENSE");
    assert!(licence.contains("Apache License") && licence.contains("Version 2.0"));
    for package in [
        "core",
        "cli",
        "bindings/python",
        "bindings/node",
        "bindings/elixir",
        "bindings/jvm",
    ] {
        assert_eq!(
            read(&format!("{package}/LICENSE")),
            licence,
            "{package}/LICENSE is not the repository's LICENSE"
        );
    }
}
