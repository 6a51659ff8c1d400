//! Helpers shared by the integration tests: running a test case in a child process (for
//! process-wide settings, expected panics and hang detection) with a deadline checked from outside.
#![allow(dead_code)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the case a child process should run.
pub(crate) const CHILD_ENV: &str = "RCU_TEST_CHILD";

/// The case this process should run as a child, if any.
pub(crate) fn child_case() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Runs test `test_name` of the current test binary in a child process with `RCU_TEST_CHILD=case`
/// and extra environment; kills it and panics if it runs past `deadline`.
pub(crate) fn run_child(
    test_name: &str,
    case: &str,
    env: &[(&str, &str)],
    deadline: Duration,
) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, case)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn child test process");
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().expect("try_wait") {
            return child.wait_with_output().expect("wait_with_output");
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait_with_output");
            panic!(
                "child case '{case}' hung for more than {deadline:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Text of a child's stderr.
pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
