//! The command line of `compare`: `--help` describes every option and exits 0, a usage error
//! prints the error and a hint (not the help) and exits 2, and `--json` prints one JSON document.

use std::process::Command;
use std::time::Duration;

use test_support::run_with_deadline;

/// A hang guard, not a timing: the JSON run below takes a few seconds.
const DEADLINE: Duration = Duration::from_secs(300);

fn compare(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_compare"));
    cmd.args(args);
    let out = run_with_deadline(&mut cmd, DEADLINE).expect("spawn compare");
    assert!(!out.timed_out(), "compare {args:?} hung");
    (out.code(), out.stdout_text(), out.stderr_text())
}

#[test]
fn help_describes_every_option() {
    let (code, out, err) = compare(&["--help"]);
    assert_eq!(code, Some(0), "{err}");
    for opt in ["--quick", "--only", "--json", "--rounds", "kfree_zero"] {
        assert!(out.contains(opt), "--help lacks {opt}:\n{out}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_hint() {
    for args in [
        &["--rounds", "0"][..],
        &["--rounds", "x"],
        &["--rounds"],
        &["--bogus"],
        &["stray"],
        &["--only", "no-such-group-anywhere"],
    ] {
        let (code, _, err) = compare(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("error:"), "{args:?}: {err}");
        assert!(err.contains("try '--help'"), "{args:?}: {err}");
        assert!(
            !err.contains("Exit status"),
            "{args:?} printed the help: {err}"
        );
    }
}

#[test]
fn json_is_one_document() {
    let (code, out, err) = compare(&["--quick", "--rounds", "1", "--only", "sync0", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is one JSON document");
    assert_eq!(v["quick"], true);
    assert_eq!(v["rounds"], 1);
    assert!(v["machine"]["nproc"].as_u64().is_some_and(|n| n > 0), "{v}");
    let rows = v["rows"].as_array().expect("rows");
    assert!(!rows.is_empty(), "{v}");
    for r in rows {
        assert_eq!(r["group"], "sync0", "{r}");
        for k in [
            "figure",
            "unit",
            "ours",
            "ours_samples",
            "ratio",
            "target",
            "met",
        ] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
    }
}
