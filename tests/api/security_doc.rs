//! docs/security.md, the threat model, names the tests behind its claims: each must exist.

use std::path::Path;

/// A test named by the threat model: the file, the modules inside it, the function.
#[derive(Debug)]
struct TestRef {
    file: String,
    modules: Vec<String>,
    name: String,
}

/// Every `tests/api/<module>.rs::<name>` and `src/<path>.rs::<module>::...::<name>` in `text`.
fn test_refs(text: &str) -> Vec<TestRef> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '.');
    let is_ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut starts: Vec<usize> = ["tests/api/", "src/"]
        .iter()
        .flat_map(|root| text.match_indices(root).map(|(i, _)| i))
        // `src/` inside a longer path (`e2e/src/`) is not the crate's.
        .filter(|&i| !text[..i].chars().next_back().is_some_and(is_path_char))
        .collect();
    starts.sort_unstable();
    let mut refs = Vec::new();
    for start in starts {
        let rest = &text[start..];
        let path_len = rest.find(|c: char| !is_path_char(c)).unwrap_or(rest.len());
        let file = &rest[..path_len];
        let Some(mut after) = rest[path_len..].strip_prefix("::") else {
            continue; // a file, not a test
        };
        if !file.ends_with(".rs") {
            continue;
        }
        let mut segments = Vec::new();
        loop {
            let len = after
                .find(|c: char| !is_ident_char(c))
                .unwrap_or(after.len());
            segments.push(after[..len].to_string());
            match after[len..].strip_prefix("::") {
                Some(more) => after = more,
                None => break,
            }
        }
        let name = segments.pop().unwrap_or_default();
        refs.push(TestRef {
            file: file.to_string(),
            modules: segments,
            name,
        });
    }
    refs
}

/// Why `r` does not name a function of its file, if it does not.
fn missing(root: &Path, r: &TestRef) -> Option<String> {
    let Ok(source) = std::fs::read_to_string(root.join(&r.file)) else {
        return Some(format!("{}: no such file", r.file));
    };
    // Each module opens after the one before it, and the function after the last.
    let mut from = 0;
    for module in &r.modules {
        match source[from..].find(&format!("mod {module} {{")) {
            Some(at) => from += at,
            None => return Some(format!("{}: no `mod {module}`", r.file)),
        }
    }
    let body = &source[from..];
    let found = [format!("fn {}(", r.name), format!("fn {}<", r.name)]
        .iter()
        .any(|f| body.contains(f.as_str()));
    (!found).then(|| {
        format!(
            "{}::{}: no `fn {}(`",
            r.file,
            r.modules
                .iter()
                .chain([&r.name])
                .cloned()
                .collect::<Vec<_>>()
                .join("::"),
            r.name
        )
    })
}

#[test]
fn the_threat_model_walks_the_owasp_top_ten_and_every_test_it_names_exists() {
    // Arrange
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/security.md")).unwrap();

    // Act
    let refs = test_refs(&doc);
    let mut problems: Vec<String> = refs.iter().filter_map(|r| missing(root, r)).collect();
    for n in 1..=10 {
        if !doc.contains(&format!("### API{n}:2023 ")) {
            problems.push(format!("no section for API{n}:2023"));
        }
    }

    // Assert
    assert!(
        refs.len() >= 50,
        "only {} test references found: is the parser still reading the page?",
        refs.len()
    );
    assert!(
        refs.iter()
            .any(|r| r.file.starts_with("src/") && !r.modules.is_empty()),
        "no src/...::<module>::<test> reference was read"
    );
    assert!(
        problems.is_empty(),
        "docs/security.md names tests that do not exist:\n{}",
        problems.join("\n")
    );
}
