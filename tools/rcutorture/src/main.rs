//! `rcutorture`: the rcu-kit stress tool, modelled on the Linux kernel's rcutorture and liburcu's
//! `tests/regression/rcutorture.h`.
//!
//! Readers check the *pipeline age* of the elements they hold (how many grace periods have
//! completed since the element was removed); any age above 1 inside a read-side critical section
//! means RCU is broken. Writers retire elements through `call_rcu`, `kfree_rcu`,
//! `synchronize_rcu`, `synchronize_rcu_expedited`, the polled API, or a `SLAB_TYPESAFE_BY_RCU`
//! cache, optionally under a page budget, an `RLIMIT_AS` limit and injected reader stalls.
//!
//! ```text
//! cargo run --release -p rcutorture -- --mode all --seconds 2
//! cargo run --release -p rcutorture -- --help
//! ```
//!
//! Exit status: 0 when no error, no lost element and no abort; 1 otherwise; 2 for usage errors.
//! The engine is this package's library (see its documentation).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(rcutorture::main_with_args(&args));
}
