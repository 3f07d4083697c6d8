//! One-way layers: no import cycle among the modules of `src/`
//! (`scripts/module-cycles`, decision 28).

use std::path::Path;
use std::process::Command;

#[test]
fn src_modules_have_no_import_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(root.join("scripts/module-cycles"))
        .arg(root.join("src"))
        .output()
        .expect("python3 runs scripts/module-cycles (install python3)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "import cycles among src/ modules:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("no cycles"), "{stdout}");
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    std::fs::write(
        src.join("b.rs"),
        "//! uses crate::a only in a comment here\npub struct B;\n\
         pub fn f() -> super::a::A { super::a::A }\n",
    )
    .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(root.join("scripts/module-cycles"))
        .arg(src)
        .output()
        .expect("python3 runs scripts/module-cycles");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("cycle among: a, b"), "{stdout}");
}
