//! Misuse is an error, not a hang: blocking calls inside a read-side critical section panic at
//! once with a clear message. Each case runs in a child process whose deadline is checked from
//! outside, so a hang fails the test instead of stalling the suite.
#![cfg(not(rcu_loom))]

use std::time::Duration;

use test_support::{child_case, run_child, stderr};

fn run_case(case: &str) {
    match case {
        "sync" => {
            let _g = rcu_core::rcu_read_lock();
            rcu_core::synchronize_rcu();
        }
        "sync_nested" => {
            let _g = rcu_core::rcu_read_lock();
            let _g2 = rcu_core::rcu_read_lock();
            drop(_g2);
            rcu_core::synchronize_rcu();
        }
        "expedited" => {
            let _g = rcu_core::rcu_read_lock();
            rcu_core::synchronize_rcu_expedited();
        }
        "barrier" => {
            rcu_core::call_rcu(|| ());
            let _g = rcu_core::rcu_read_lock();
            rcu_core::rcu_barrier();
        }
        "cond" => {
            let s = rcu_core::get_state_synchronize_rcu();
            let _g = rcu_core::rcu_read_lock();
            rcu_core::cond_synchronize_rcu(s);
        }
        "barrier_in_callback" => {
            let (tx, rx) = std::sync::mpsc::channel();
            rcu_core::call_rcu(move || {
                let r = std::panic::catch_unwind(rcu_core::rcu_barrier);
                let msg = r
                    .err()
                    .and_then(|p| p.downcast_ref::<&str>().map(|s| s.to_string()));
                tx.send(msg).unwrap();
            });
            let msg = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("callback ran");
            let msg = msg.expect("rcu_barrier in a callback must panic");
            eprintln!("caught: {msg}");
            std::process::exit(if msg.contains("call_rcu callback") {
                42
            } else {
                1
            });
        }
        other => panic!("unknown case {other}"),
    }
    std::process::exit(0); // reaching here means the misuse was not caught
}

fn expect_panic(case: &str, needle: &str) {
    let out = run_child("misuse_child", case, &[], Duration::from_secs(30));
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "case {case}: misuse was not reported\n{err}"
    );
    assert!(
        err.contains(needle),
        "case {case}: message lacks {needle:?}:\n{err}"
    );
}

#[test]
fn misuse_child() {
    if let Some(case) = child_case() {
        run_case(&case);
    }
}

#[test]
fn synchronize_inside_reader_panics() {
    expect_panic("sync", "read-side critical section");
}

#[test]
fn synchronize_inside_nested_reader_panics() {
    expect_panic("sync_nested", "read-side critical section");
}

#[test]
fn expedited_inside_reader_panics() {
    expect_panic("expedited", "read-side critical section");
}

#[test]
fn barrier_inside_reader_panics() {
    expect_panic("barrier", "read-side critical section");
}

#[test]
fn cond_synchronize_inside_reader_panics() {
    expect_panic("cond", "read-side critical section");
}

#[test]
fn barrier_inside_callback_panics() {
    let out = run_child(
        "misuse_child",
        "barrier_in_callback",
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));
}

#[test]
fn guard_is_not_send() {
    // Compile-time property, checked with a negative-trait trick at run time: the guard type
    // must not implement Send (trybuild is not a dependency; this auto-trait probe suffices).
    trait NotSend {
        const IS_SEND: bool = false;
    }
    impl<T: ?Sized> NotSend for T {}
    struct Probe<T: ?Sized>(core::marker::PhantomData<T>);
    #[allow(dead_code)]
    impl<T: ?Sized + Send> Probe<T> {
        const IS_SEND: bool = true;
    }
    const { assert!(!<Probe<rcu_core::RcuReadGuard>>::IS_SEND) };
    const { assert!(<Probe<u32>>::IS_SEND) };
}

#[test]
fn may_block_is_false_inside_readers_and_on_callback_threads() {
    assert!(rcu_core::may_block());
    let g = rcu_core::rcu_read_lock();
    assert!(
        !rcu_core::may_block(),
        "inside a read-side critical section"
    );
    drop(g);
    assert!(rcu_core::may_block());
    let (tx, rx) = std::sync::mpsc::channel();
    rcu_core::call_rcu(move || tx.send(rcu_core::may_block()).unwrap());
    rcu_core::rcu_barrier();
    assert!(
        !rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        "on the thread that runs call_rcu callbacks"
    );
}

#[test]
fn no_barrier_scope_refuses_rcu_barrier_but_not_grace_periods() {
    assert!(rcu_core::raw::no_barrier_reason().is_none());
    {
        let _outer = rcu_core::raw::enter_no_barrier("from an outer test scope");
        assert!(!rcu_core::may_block(), "inside a no-barrier scope");
        {
            let _inner = rcu_core::raw::enter_no_barrier("from an inner test scope");
            assert_eq!(
                rcu_core::raw::no_barrier_reason(),
                Some("from an inner test scope")
            );
        }
        assert_eq!(
            rcu_core::raw::no_barrier_reason(),
            Some("from an outer test scope")
        );
        // Waiting for readers stays allowed.
        rcu_core::synchronize_rcu();
        let r = std::panic::catch_unwind(rcu_core::rcu_barrier);
        let e = r.expect_err("rcu_barrier inside a no-barrier scope must panic");
        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("rcu_barrier() called from an outer test scope"),
            "{msg}"
        );
    }
    assert!(rcu_core::may_block());
    assert!(rcu_core::raw::no_barrier_reason().is_none());
    rcu_core::rcu_barrier();
}
