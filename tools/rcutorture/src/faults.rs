//! `--fail-rate`: random allocation failures at every fault point of the kit, and the per-mode
//! summary of what was injected and which fallbacks ran.

use std::fmt::Write as _;

use rcu_kit::kfree_batch::{self, KfreeStats};
use rcu_kit::rcu_core::fault::{self, FaultAttr, Point, NPOINTS};
use rcu_kit::slab_backend::{self, MemoryStats};

/// Parses `--fail-rate PCT` (percent, one decimal allowed) into thousandths.
pub(crate) fn parse_rate(v: &str) -> Result<u32, String> {
    fault::parse(&format!("probability={v}"))
        .map(|a| a.per_mille)
        .map_err(|_| format!("--fail-rate: '{v}' is not a percentage (0-100, one decimal)"))
}

/// Arms every point with `per_mille` thousandths of failures, no limit (nothing when 0).
pub(crate) fn arm_all(per_mille: u32) {
    if per_mille == 0 {
        return;
    }
    for p in Point::ALL {
        fault::arm(
            p,
            FaultAttr {
                per_mille,
                ..FaultAttr::default()
            },
        );
    }
}

/// Counters at the start of a mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Base {
    injected: [u64; NPOINTS],
    kfree: KfreeStats,
    pages: MemoryStats,
    inline_fallback: u64,
}

impl Base {
    pub(crate) fn take() -> Base {
        Base {
            injected: Point::ALL.map(fault::injected),
            kfree: kfree_batch::stats(),
            pages: slab_backend::memory_stats(),
            inline_fallback: rcu_kit::rcu_core::stats().callbacks_inline_fallback,
        }
    }
}

/// The `FAULTS` line of a mode: failures injected per point since `base`, and how often each
/// fallback ran. Empty when nothing was armed and nothing injected.
pub(crate) fn summary(mode: &str, base: &Base) -> String {
    let now = Base::take();
    let total: u64 = (0..NPOINTS)
        .map(|i| now.injected[i] - base.injected[i])
        .sum();
    if total == 0 && !Point::ALL.iter().any(|&p| fault::is_armed(p)) {
        return String::new();
    }
    let mut o = String::new();
    let _ = write!(o, "FAULTS mode={mode} injected={total}");
    for (i, p) in Point::ALL.iter().enumerate() {
        let _ = write!(o, " {}={}", p.name(), now.injected[i] - base.injected[i]);
    }
    let (k, kb, pg, pb) = (&now.kfree, &base.kfree, &now.pages, &base.pages);
    let _ = writeln!(
        o,
        " | fallbacks: call_rcu_inline={} kfree_emergency_pages={} kfree_head_queued={} \
         kfree_parked={} kfree_park_waits={} kfree_spilled={} kfree_sync={} page_alloc_failures={} \
         page_reclaims={}",
        now.inline_fallback - base.inline_fallback,
        k.emergency_pages_used - kb.emergency_pages_used,
        k.head_queued - kb.head_queued,
        k.objects_parked - kb.objects_parked,
        k.park_waits - kb.park_waits,
        k.spilled - kb.spilled,
        k.fallback_sync - kb.fallback_sync,
        pg.alloc_failures - pb.alloc_failures,
        pg.shrinker_runs - pb.shrinker_runs,
    );
    o
}

#[cfg(test)]
mod tests {
    #[test]
    fn fail_rate_values() {
        assert_eq!(super::parse_rate("10"), Ok(100));
        assert_eq!(super::parse_rate("0.5"), Ok(5));
        assert!(super::parse_rate("101")
            .unwrap_err()
            .contains("--fail-rate: '101'"));
        let args: Vec<String> = ["--fail-rate", "12.5"].map(String::from).to_vec();
        match crate::cli::parse(&args) {
            Ok(o) => assert_eq!(o.fail_rate, 125),
            other => panic!("{other:?}"),
        }
    }
}
