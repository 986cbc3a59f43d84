//! Keeps the README and its docs true: the stage catalog (`docs/stages.md`, which the README names)
//! names every stage kind the binary knows, and the two quick-start commands the README promises exist.

#[test]
fn stage_catalog_lists_every_registered_kind() {
    let catalog = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/stages.md")).unwrap();
    let missing: Vec<&str> = neurostream::stages::registry().iter().map(|e| e.kind).filter(|k| !catalog.contains(&format!("`{k}`"))).collect();
    assert!(missing.is_empty(), "docs/stages.md's stage catalog lacks {missing:?}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("docs/stages.md"), "the README must say where the stage catalog is");
}

#[test]
fn readme_quick_start_commands_exist() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("cargo run --release -- run pipelines/quickstart.toml"));
    assert!(readme.contains("bash .ci/run"));
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(ci.contains("cargo test --locked"), ".ci/run must call the README's test command");
    assert!(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/quickstart.toml")).exists());
}

#[test]
fn stages_command_lists_options_with_defaults_and_units() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_neurostream")).arg("stages").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for e in neurostream::stages::registry() {
        assert!(text.contains(e.kind), "`stages` lacks {}", e.kind);
    }
    // Generated from the config types: a default, a type and a unit from the doc comment.
    let line = text.lines().find(|l| l.trim_start().starts_with("batch_rows")).expect("source.parquet's batch_rows");
    assert!(line.contains("integer") && line.contains("default 65536") && line.contains("[rows]"), "{line}");
}
