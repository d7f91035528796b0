//! docs/configuration.md and docs/cli.md against the binary's own `--help`, so that the reference
//! pages cannot drift from the clap definitions: a flag added, renamed or removed, an environment
//! variable or a default changed, or a subcommand added, fails here until the page says so.

use std::path::Path;
use std::process::Command;

use crate::helpers::BIN;

/// One option as `--help` lists it.
#[derive(Debug)]
struct Flag {
    /// The long name, with its dashes: `--database-url`.
    name: String,
    env: Option<String>,
    default: Option<String>,
}

fn read(page: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(page))
        .unwrap_or_else(|e| panic!("{page}: {e}"))
}

/// `latchkey <args> --help`, with no `LATCHKEY_*` variable set (clap prints their values).
fn help(args: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--help");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LATCHKEY_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run latchkey --help");
    assert!(out.status.success(), "latchkey {args:?} --help failed");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// Whether a help line starts an option (`  -h, --help`, `      --url <URL>`), not a possible
/// value (`- sha256: ...`) or a line of description.
fn option_line(line: &str) -> Option<String> {
    let t = line.trim_start();
    if !line.starts_with("  ") {
        return None;
    }
    let rest = if let Some(r) = t.strip_prefix("--") {
        r
    } else {
        let b = t.as_bytes();
        if b.len() > 5 && b[0] == b'-' && b[1].is_ascii_alphabetic() && t[2..].starts_with(", --") {
            &t[6..]
        } else {
            return None;
        }
    };
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (!name.is_empty()).then(|| format!("--{name}"))
}

/// The text between the last `[<tag>: ` and the next `]` (for `env`, up to the `=`). The last,
/// because clap prints its own after the description, which may quote one too.
fn bracket(block: &str, tag: &str) -> Option<String> {
    let start = block.rfind(&format!("[{tag}: "))? + tag.len() + 3;
    let len = block[start..].find(']')?;
    let v = &block[start..start + len];
    Some(if tag == "env" {
        v.split('=').next().unwrap_or(v).to_string()
    } else {
        v.to_string()
    })
}

/// Every option of a `--help` text, `--help` itself left out.
fn flags_of(help: &str) -> Vec<Flag> {
    let lines: Vec<&str> = help.lines().collect();
    let starts: Vec<(usize, String)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| option_line(l).map(|n| (i, n)))
        .collect();
    let mut flags = Vec::new();
    for (k, (i, name)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(lines.len(), |(j, _)| *j);
        let block = lines[*i..end].join("\n");
        if name == "--help" {
            continue;
        }
        flags.push(Flag {
            name: name.clone(),
            env: bracket(&block, "env"),
            default: bracket(&block, "default"),
        });
    }
    flags
}

/// The subcommands a `--help` text lists under `Commands:`, `help` left out.
fn subcommands_of(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Every command path (`["token", "create"]`), groups included, depth first.
fn command_paths() -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for top in subcommands_of(&help(&[])) {
        out.push(vec![top.clone()]);
        for sub in subcommands_of(&help(&[&top])) {
            out.push(vec![top.clone(), sub]);
        }
    }
    out
}

/// A markdown page's sections: (heading line, body), headings inside code fences ignored.
fn sections(page: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![(String::new(), String::new())];
    let mut fenced = false;
    for line in page.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && line.starts_with('#') {
            out.push((line.to_string(), String::new()));
        } else if let Some(last) = out.last_mut() {
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    out
}

/// Whether `text` names `flag` as a whole word (`--token` does not count for `--token-id`).
fn mentions(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(i, _)| {
        !text[i + flag.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// The rows of the flag table in docs/configuration.md's `## Flags of \`latchkey serve\``:
/// (flag, env, default cell).
fn documented_serve_flags() -> Vec<(String, String, String)> {
    let page = read("docs/configuration.md");
    let (_, body) = sections(&page)
        .into_iter()
        .find(|(h, _)| h.starts_with("## Flags of `latchkey serve`"))
        .expect("docs/configuration.md has a `## Flags of `latchkey serve`` section");
    let unquote = |s: &str| s.trim().trim_matches('`').to_string();
    body.lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            (
                unquote(cells[1]),
                unquote(cells[2]),
                cells[3].trim().to_string(),
            )
        })
        .collect()
}

#[test]
fn configuration_md_lists_every_serve_flag_with_its_env_and_default() {
    // Arrange
    let actual = flags_of(&help(&["serve"]));
    let documented = documented_serve_flags();
    assert!(actual.len() > 20, "parsed too few flags: {actual:?}");

    // Act
    let mut problems = Vec::new();
    for f in &actual {
        let Some((_, env, default)) = documented.iter().find(|(n, _, _)| *n == f.name) else {
            problems.push(format!("{} is missing from the table", f.name));
            continue;
        };
        if f.env.as_deref() != Some(env.as_str()) {
            problems.push(format!(
                "{}: env is {:?}, the table says {env}",
                f.name, f.env
            ));
        }
        match &f.default {
            Some(d) if default.trim_matches('`') != d => problems.push(format!(
                "{}: default is `{d}`, the table says {default}",
                f.name
            )),
            None if default.starts_with('`') => problems.push(format!(
                "{}: has no default, the table says {default}",
                f.name
            )),
            _ => {}
        }
    }
    for (name, _, _) in &documented {
        if !actual.iter().any(|f| f.name == *name) {
            problems.push(format!("{name} is in the table but not in `serve --help`"));
        }
    }

    // Assert
    assert!(
        problems.is_empty(),
        "docs/configuration.md is out of date with `latchkey serve --help`:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_config_file_example_in_configuration_md_is_accepted() {
    // Arrange
    let page = read("docs/configuration.md");
    let start = page.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let len = page[start..].find("```").expect("its end");
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("latchkey.toml");
    std::fs::write(&file, &page[start..start + len]).unwrap();

    // Act: bootstrap loads the file as serve does.
    let out = Command::new(BIN)
        .args(["bootstrap", "--config"])
        .arg(&file)
        .arg("--database-url")
        .arg(format!(
            "sqlite://{}",
            dir.path().join("db.sqlite").display()
        ))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();

    // Assert
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("_pat_"));
}

#[test]
fn cli_md_documents_every_subcommand_and_its_flags() {
    // Arrange
    let page = read("docs/cli.md");
    let secs = sections(&page);
    let common = secs
        .iter()
        .find(|(h, _)| h.starts_with("## Common flags"))
        .map(|(_, b)| b.clone())
        .expect("docs/cli.md has a `## Common flags` section");
    let config = read("docs/configuration.md");
    let paths = command_paths();
    assert!(paths.len() >= 15, "parsed too few commands: {paths:?}");

    // Act
    let mut problems = Vec::new();
    for flag in flags_of(&help(&[])) {
        if !mentions(&page, &flag.name) {
            problems.push(format!("latchkey {} is not mentioned", flag.name));
        }
    }
    for path in &paths {
        let name = format!("`latchkey {}`", path.join(" "));
        let Some((_, body)) = secs
            .iter()
            .find(|(h, _)| h.starts_with('#') && h.contains(&name))
        else {
            problems.push(format!("no heading for {name}"));
            continue;
        };
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        for flag in flags_of(&help(&args)) {
            let documented = mentions(body, &flag.name)
                || mentions(&common, &flag.name)
                || mentions(&config, &flag.name);
            if !documented {
                problems.push(format!("{name}: {} is not documented", flag.name));
            }
        }
    }

    // Assert
    assert!(
        problems.is_empty(),
        "docs/cli.md is out of date with `latchkey --help`:\n{}",
        problems.join("\n")
    );
}
