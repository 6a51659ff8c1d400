//! A check that the modules of a crate use each other in one direction only.
//!
//! Each crate lists its top-level modules bottom to top; [`check`] reads the crate's sources and
//! reports every `crate::m` path in code (comments are skipped) that names a module listed after
//! the module of the file it is in. A module's own files may use each other (`super::`), and
//! `crate::` names that are not modules (re-exports at the crate root, macros) are not checked.

use std::path::Path;

/// Checks the sources under `src` (the crate's `src/` directory) against `order` (top-level
/// module names, bottom first); `allowed` lists `(from, to)` edges that may go upwards. A source
/// file whose module is not in `order` (other than `lib.rs`) is an error, so a new module must be
/// placed. Returns the violations, one line each.
pub fn check(src: &Path, order: &[&str], allowed: &[(&str, &str)]) -> Result<(), String> {
    let mut files = Vec::new();
    collect(src, &mut files);
    let modules: Vec<String> = files
        .iter()
        .filter_map(|f| top_module(src, f))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let rank = |m: &str| order.iter().position(|o| *o == m);
    let mut errors = Vec::new();
    for m in &modules {
        if rank(m).is_none() {
            errors.push(format!("module `{m}` is not placed in the layering list"));
        }
    }
    for f in &files {
        let Some(from) = top_module(src, f) else {
            continue;
        };
        let Some(from_rank) = rank(&from) else {
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read source");
        for (i, line) in text.lines().enumerate() {
            let code = match line.find("//") {
                Some(c) => &line[..c],
                None => line,
            };
            let mut rest = code;
            while let Some(p) = rest.find("crate::") {
                rest = &rest[p + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let Some(to_rank) = rank(&name) else {
                    continue;
                };
                if to_rank > from_rank && !allowed.contains(&(from.as_str(), name.as_str())) {
                    errors.push(format!(
                        "{}:{}: `{from}` uses `{name}`, a module above it",
                        f.display(),
                        i + 1
                    ));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read source directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`None` for the crate root).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}
