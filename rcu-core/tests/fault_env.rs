//! Fault points armed from the environment: a well-formed variable arms its point, a malformed
//! one stops the process at first use with a message naming the variable and the error. Each
//! case runs in a child process (the environment is read once per process).
#![cfg(not(rcu_loom))]

use std::time::Duration;

use rcu_core::fault::{self, Point};
use test_support::{child_case, run_child, stderr};

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn env_cases() {
    match child_case().as_deref() {
        Some("armed") => {
            let got: Vec<bool> = (0..6).map(|_| fault::should_fail(Point::Heap, 8)).collect();
            assert_eq!(
                got,
                [false, true, false, true, false, false],
                "interval 2, times 2"
            );
            assert_eq!(fault::injected(Point::Heap), 2);
            assert!(
                !fault::should_fail(Point::Pages, 8),
                "other points stay disarmed"
            );
            // The program's own arming replaces the environment's.
            fault::arm(Point::Heap, fault::FaultAttr::always(1));
            assert!(fault::should_fail(Point::Heap, 8));
            println!("child ok");
            return;
        }
        Some("malformed") => {
            let _ = fault::should_fail(Point::Heap, 8);
            println!("child survived a malformed variable");
            return;
        }
        Some("api") => {
            let e = fault::init_from_env().unwrap_err();
            assert_eq!(e.point, Point::CallRcu);
            assert_eq!(e.error.msg, "unknown key");
            println!("child ok: {e}");
            return;
        }
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
    let o = run_child(
        "env_cases",
        "armed",
        &[("RCU_KIT_FAIL_HEAP", "probability=100,interval=2,times=2")],
        DEADLINE,
    );
    assert!(o.status.success(), "armed: {}", stderr(&o));

    let o = run_child(
        "env_cases",
        "malformed",
        &[("RCU_KIT_FAIL_HEAP", "probability=150,times=1")],
        DEADLINE,
    );
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "a malformed variable was ignored: {err}"
    );
    assert!(
        err.contains("malformed RCU_KIT_FAIL_HEAP: bad probability (at byte 0)"),
        "message: {err}"
    );

    let o = run_child(
        "env_cases",
        "api",
        &[("RCU_KIT_FAIL_CALL_RCU", "probability=1,tims=3")],
        DEADLINE,
    );
    assert!(o.status.success(), "api: {}", stderr(&o));
}
