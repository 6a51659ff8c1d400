//! The comparison's groups: for each, the subjects (ours and the baselines, run alternately in
//! rounds by the harness) and the rows printed from their medians, with their targets.

use crate::harness::{Group, Target, Unit};
use crate::{baselines, child, harness, ours, Sizes};

/// Every group, in the order they run.
pub(crate) fn groups(sz: Sizes) -> Vec<Group> {
    let mut out = Vec::new();

    // --- read side, 1 thread ---------------------------------------------------------------
    let mut g = Group::new("read1");
    let n = sz.read;
    let o = g.subject("ours rcu_read_lock+drop", move || ours::read_pairs(n));
    let cb = g.subject("crossbeam-epoch pin", move || baselines::cb::pin_pairs(n));
    let c = std::sync::Arc::new(seize::Collector::new());
    let se = g.subject("seize enter", move || baselines::sz::enter_pairs(&c, n));
    g.row(
        "read lock+unlock, 1 thr, vs crossbeam-epoch",
        Unit::Ns,
        o,
        Some(cb),
        Target::RatioLe(0.15),
    );
    g.row(
        "read lock+unlock, 1 thr, vs seize",
        Unit::Ns,
        o,
        Some(se),
        Target::None,
    );
    #[cfg(rcu_have_liburcu)]
    {
        let u = g.subject("liburcu memb", move || baselines::urcu::read_pairs(n));
        g.row(
            "read lock+unlock, 1 thr, vs liburcu memb",
            Unit::Ns,
            o,
            Some(u),
            Target::RatioLe(1.2),
        );
    }
    out.push(g);

    // --- read side, 2 threads --------------------------------------------------------------
    let mut g = Group::new("read2");
    let o = g.subject("ours 2 thr", move || ours::two_threads(n, ours::read_loop));
    let cb = g.subject("crossbeam-epoch 2 thr", move || {
        ours::two_threads(n, baselines::cb::pin_loop)
    });
    g.row(
        "read lock+unlock, 2 thr (slower), vs crossbeam-epoch",
        Unit::Ns,
        o,
        Some(cb),
        Target::None,
    );
    #[cfg(rcu_have_liburcu)]
    {
        let u = g.subject("liburcu memb 2 thr", move || {
            baselines::urcu::read_pairs_2thr(n)
        });
        g.row(
            "read lock+unlock, 2 thr (slower), vs liburcu memb",
            Unit::Ns,
            o,
            Some(u),
            Target::None,
        );
    }
    out.push(g);

    // --- read side: does it write a shared cache line? ---------------------------------------
    // The same loop on 1 thread pinned to CPU 0, then on 2 threads pinned to CPUs 0 and 1. A read
    // side that writes only its own line keeps its per-thread cost like the private-line control;
    // one that wrote a shared line would degrade like the shared-line control.
    let mut g = Group::new("readscale");
    let o = g.subject_n("ours read lock+unlock, pinned", move || {
        harness::pinned_scaling(n, ours::read_body)
    });
    let pc = g.subject_n("control: load+store, private line", move || {
        harness::pinned_scaling(n, baselines::control::private_line)
    });
    let sc = g.subject_n("control: load+store, shared line", move || {
        harness::pinned_scaling(n, baselines::control::shared_line)
    });
    g.row(
        "read side 2 thr/1 thr (pinned), vs private-line control",
        Unit::Ratio,
        (o, 2),
        Some((pc, 2)),
        Target::RatioLe(1.2),
    );
    g.row(
        "read side 2 thr/1 thr (pinned), vs shared-line control",
        Unit::Ratio,
        (o, 2),
        Some((sc, 2)),
        Target::None,
    );
    g.row(
        "read lock+unlock, thread CPU ns/pair with 2 thr pinned",
        Unit::Ns,
        (o, 1),
        Some((sc, 1)),
        Target::None,
    );
    out.push(g);

    // --- nested read side ----------------------------------------------------------------
    let mut g = Group::new("nested");
    let o = g.subject("ours nested", move || ours::read_pairs_nested(n));
    let cb = g.subject("crossbeam-epoch nested pin", move || {
        baselines::cb::pin_nested(n)
    });
    g.row(
        "nested read lock+unlock, vs crossbeam-epoch",
        Unit::Ns,
        o,
        Some(cb),
        Target::None,
    );
    #[cfg(rcu_have_liburcu)]
    {
        let u = g.subject("liburcu memb nested", move || {
            baselines::urcu::read_pairs_nested(n)
        });
        g.row(
            "nested read lock+unlock, vs liburcu memb",
            Unit::Ns,
            o,
            Some(u),
            Target::None,
        );
    }
    out.push(g);

    // --- synchronize_rcu, no other thread -----------------------------------------------------
    let mut g = Group::new("sync0");
    let calls = sz.sync;
    let o = g.subject("ours synchronize_rcu idle", move || {
        ours::sync_idle(calls, false)
    });
    let oe = g.subject("ours synchronize_rcu_expedited idle", move || {
        ours::sync_idle(calls, true)
    });
    #[cfg(rcu_have_liburcu)]
    let u = Some(g.subject("liburcu memb sync0", move || {
        baselines::urcu::sync(calls, false)
    }));
    #[cfg(not(rcu_have_liburcu))]
    let u = None;
    g.row(
        "synchronize_rcu, no other thread",
        Unit::Us,
        o,
        u,
        Target::AbsLe(1.0),
    );
    g.row(
        "synchronize_rcu_expedited, no other thread",
        Unit::Us,
        oe,
        u,
        Target::None,
    );
    out.push(g);

    // --- synchronize_rcu, one busy reader -------------------------------------------------
    let mut g = Group::new("sync1");
    let o = g.subject("ours synchronize_rcu busy", move || {
        ours::sync_busy(calls, false)
    });
    let oe = g.subject("ours synchronize_rcu_expedited busy", move || {
        ours::sync_busy(calls, true)
    });
    let mb = g.subject("raw membarrier", move || ours::raw_membarrier_busy(calls));
    g.row(
        "synchronize_rcu, 1 busy reader, vs 1 raw membarrier",
        Unit::Us,
        o,
        Some(mb),
        Target::RatioLe(1.5),
    );
    g.row(
        "sync_rcu_expedited, 1 busy reader, vs 1 raw membarrier",
        Unit::Us,
        oe,
        Some(mb),
        Target::None,
    );
    #[cfg(rcu_have_liburcu)]
    {
        let u = g.subject("liburcu memb sync1", move || {
            baselines::urcu::sync(calls, true)
        });
        g.row(
            "synchronize_rcu, 1 busy reader, vs liburcu memb",
            Unit::Us,
            o,
            Some(u),
            Target::None,
        );
    }
    out.push(g);

    // --- call_rcu end to end -----------------------------------------------------------------
    let mut g = Group::new("call_rcu");
    let m = sz.call_rcu;
    let o = g.subject_n("ours call_rcu", move || ours::call_rcu_end_to_end(m));
    let cb = g.subject("crossbeam-epoch defer_destroy", move || {
        baselines::cb::defer_rate(m)
    });
    #[cfg(rcu_have_liburcu)]
    {
        let u = g.subject_n("liburcu memb call_rcu", move || {
            baselines::urcu::call_rcu(m)
        });
        g.row(
            "call_rcu 32 B end to end (+rcu_barrier), vs liburcu",
            Unit::Mps,
            (o, 0),
            Some((u, 0)),
            Target::RatioGe(2.0),
        );
        g.row(
            "call_rcu 32 B enqueue phase, vs liburcu",
            Unit::Mps,
            (o, 1),
            Some((u, 1)),
            Target::None,
        );
    }
    #[cfg(not(rcu_have_liburcu))]
    g.row(
        "call_rcu 32 B end to end (+rcu_barrier)",
        Unit::Mps,
        (o, 0),
        None,
        Target::None,
    );
    g.row(
        "call_rcu 32 B end to end, vs crossbeam-epoch defer",
        Unit::Mps,
        (o, 0),
        Some(cb),
        Target::None,
    );
    out.push(g);

    // --- rcu_barrier, idle ---------------------------------------------------------------
    let mut g = Group::new("barrier");
    let bc = sz.barrier;
    let o = g.subject("ours rcu_barrier idle", move || ours::barrier_idle(bc));
    #[cfg(rcu_have_liburcu)]
    let u = Some(g.subject("liburcu memb rcu_barrier idle", move || {
        baselines::urcu::barrier_idle(bc)
    }));
    #[cfg(not(rcu_have_liburcu))]
    let u = None;
    g.row(
        "rcu_barrier, idle engine",
        Unit::Us,
        o,
        u,
        Target::AbsLe(1000.0),
    );
    out.push(g);

    // --- 16 concurrent synchronize_rcu callers ----------------------------------------------------
    let mut g = Group::new("sync16");
    let per = sz.sync16;
    let s = g.subject_n("ours 16 thr synchronize_rcu", move || {
        ours::sync_16_threads(per)
    });
    g.row(
        "16 thr synchronize_rcu: grace periods / calls",
        Unit::Ratio,
        (s, 0),
        None,
        Target::AbsLt(0.25),
    );
    g.row(
        "16 thr synchronize_rcu: heavy barriers / GP",
        Unit::Ratio,
        (s, 1),
        None,
        Target::AbsLe(1.0),
    );
    g.row(
        "16 thr synchronize_rcu: wall time / calls per thread",
        Unit::Us,
        (s, 2),
        None,
        Target::None,
    );
    out.push(g);

    // --- heavy barriers per grace period -------------------------------------------------------
    let mut g = Group::new("heavy");
    let h = g.subject("ours heavy/GP busy", move || ours::heavy_per_gp_busy(calls));
    g.row(
        "heavy barriers / GP, synchronize_rcu + 1 busy reader",
        Unit::Ratio,
        h,
        None,
        Target::AbsLe(1.0),
    );
    out.push(g);

    // --- RcuCell vs arc-swap ----------------------------------------------------------------
    let mut g = Group::new("rcucell");
    let cell = rcu_core::RcuCell::new(Some(Box::new(7u64)));
    let o = g.subject("ours RcuCell read", move || ours::rcucell_read(&cell, n));
    let sw = arc_swap::ArcSwap::from_pointee(7u64);
    let a = g.subject("arc-swap load", move || baselines::asw::load(&sw, n));
    let r = sz.replace;
    let cell = rcu_core::RcuCell::new(Some(Box::new(7u64)));
    let orp = g.subject("ours RcuCell replace", move || {
        ours::rcucell_replace(&cell, r)
    });
    let sw = arc_swap::ArcSwap::from_pointee(7u64);
    let ast = g.subject("arc-swap store", move || baselines::asw::store(&sw, r));
    g.row(
        "RcuCell lock+read+unlock, vs arc-swap load",
        Unit::Ns,
        o,
        Some(a),
        Target::None,
    );
    g.row(
        "RcuCell replace (+final rcu_barrier), vs arc-swap store",
        Unit::Ns,
        orp,
        Some(ast),
        Target::None,
    );
    out.push(g);

    // --- kfree_rcu end to end ---------------------------------------------------------------------
    let mut g = Group::new("kfree");
    let k = sz.kfree;
    let o = g.subject_n("ours kfree_rcu", move || ours::kfree_end_to_end(k));
    let cb = g.subject("crossbeam-epoch defer_destroy", move || {
        baselines::cb::defer_rate(k)
    });
    let c = std::sync::Arc::new(seize::Collector::new());
    let se = g.subject("seize retire", move || baselines::sz::retire_each(&c, k));
    let oc = g.subject_n("ours call_rcu", move || ours::call_rcu_end_to_end(k));
    g.row(
        "kfree_rcu 32 B end to end (+barrier), vs crossbeam defer",
        Unit::Mps,
        (o, 0),
        Some(cb),
        Target::RatioGe(3.0),
    );
    g.row(
        "kfree_rcu 32 B end to end, vs seize retire",
        Unit::Mps,
        (o, 0),
        Some(se),
        Target::RatioGe(1.5),
    );
    #[cfg(rcu_have_liburcu)]
    {
        let u = g.subject_n("liburcu memb call_rcu", move || {
            baselines::urcu::call_rcu(k)
        });
        g.row(
            "kfree_rcu 32 B end to end, vs liburcu call_rcu end to end",
            Unit::Mps,
            (o, 0),
            Some((u, 0)),
            Target::None,
        );
    }
    g.row(
        "kfree_rcu 32 B end to end, vs our call_rcu end to end",
        Unit::Mps,
        (o, 0),
        Some((oc, 0)),
        Target::None,
    );
    g.row(
        "kfree_rcu 32 B retire loop alone, vs crossbeam defer",
        Unit::Mps,
        (o, 1),
        Some(cb),
        Target::None,
    );
    let floor = g.subject("Box<[u8;32]> new+drop (control)", move || {
        ours::box_pair_rate(k)
    });
    g.row(
        "kfree_rcu 32 B end to end, vs bare Box new+drop (allocator floor)",
        Unit::Mps,
        (o, 0),
        Some(floor),
        Target::None,
    );
    g.row(
        "crossbeam defer, vs bare Box new+drop (allocator floor)",
        Unit::Mps,
        cb,
        Some(floor),
        Target::None,
    );
    out.push(g);

    // --- kfree_rcu, three types ---------------------------------------------------------------
    let mut g = Group::new("kfree_mixed");
    let o = g.subject_n("ours kfree_rcu 16/32/64 B", move || {
        ours::kfree_mixed_end_to_end(k)
    });
    let o1 = g.subject_n("ours kfree_rcu 32 B only", move || {
        ours::kfree_end_to_end(k)
    });
    let cb = g.subject("crossbeam-epoch defer 16/32/64 B", move || {
        baselines::cb::defer_mixed_rate(k)
    });
    let c = std::sync::Arc::new(seize::Collector::new());
    let se = g.subject("seize retire 16/32/64 B", move || {
        baselines::sz::retire_mixed(&c, k)
    });
    g.row(
        "kfree_rcu 3 types end to end, vs crossbeam defer 3 types",
        Unit::Mps,
        (o, 0),
        Some(cb),
        Target::None,
    );
    g.row(
        "kfree_rcu 3 types end to end, vs seize retire 3 types",
        Unit::Mps,
        (o, 0),
        Some(se),
        Target::None,
    );
    g.row(
        "kfree_rcu 3 types end to end, vs ours 1 type",
        Unit::Mps,
        (o, 0),
        Some((o1, 0)),
        Target::None,
    );
    out.push(g);

    // --- kfree_rcu under a zero page budget, 50 ms reader (one child process per sample) ------
    let zn = (sz.mem / 200).max(1000);
    let mut g = Group::new("kfree_zero");
    g.max_rounds(3);
    let o = g.subject_n("ours kfree_rcu, page budget 0", move || {
        child::run("kfree_zero", ours::z::COUNT, zn)
    });
    g.row(
        "kfree_rcu, page budget 0, 50 ms reader sections: objects/s",
        Unit::PerSec,
        (o, ours::z::RATE),
        None,
        Target::AbsGe(2000.0),
    );
    g.row(
        "kfree_rcu, page budget 0, 50 ms reader sections: retirer's grace-period waits",
        Unit::Count,
        (o, ours::z::WAITS),
        None,
        Target::None,
    );
    g.row(
        "kfree_rcu, page budget 0: 50 ms reader sections during the retire loop",
        Unit::Count,
        (o, ours::z::SECTIONS),
        None,
        Target::None,
    );
    out.push(g);

    // --- memory: 10M retired objects, no reader (one child process per sample) ---------------
    let mo = sz.mem;
    let mem_subject = move |g: &mut Group, label: &str, child_name: &'static str| {
        g.subject_n(label, move || child::run(child_name, child::m::COUNT, mo))
    };
    let nm = if mo % 1_000_000 == 0 {
        format!("{}M", mo / 1_000_000)
    } else {
        format!("{mo}")
    };
    let lbl = |rest: &str| format!("{nm} retired{rest}");
    let mut g = Group::new("mem");
    g.max_rounds(3);
    let o = mem_subject(&mut g, "ours kfree_rcu", "kfree");
    let cb = mem_subject(&mut g, "crossbeam-epoch defer", "cb");
    let oc = mem_subject(&mut g, "ours call_rcu", "call_rcu");
    #[cfg(rcu_have_liburcu)]
    let u = Some(mem_subject(&mut g, "liburcu memb call_rcu", "urcu"));
    #[cfg(not(rcu_have_liburcu))]
    let u: Option<usize> = None;
    use child::m;
    g.row(
        &lbl(", no reader: peak RSS growth, vs crossbeam"),
        Unit::MiB,
        (o, m::PEAK_RSS),
        Some((cb, m::PEAK_RSS)),
        Target::None,
    );
    if let Some(u) = u {
        g.row(
            &lbl(", no reader: peak RSS growth, vs liburcu call_rcu"),
            Unit::MiB,
            (o, m::PEAK_RSS),
            Some((u, m::PEAK_RSS)),
            Target::None,
        );
    }
    g.row(
        &lbl(", no reader: peak pending, vs crossbeam"),
        Unit::MiB,
        (o, m::PEAK_PENDING),
        Some((cb, m::PEAK_PENDING)),
        Target::None,
    );
    g.row(
        &lbl(": grace periods used, kfree_rcu vs our call_rcu"),
        Unit::Count,
        (o, m::GPS),
        Some((oc, m::GPS)),
        Target::None,
    );
    if let Some(u) = u {
        g.row(
            &lbl(": last retire -> last free, vs liburcu call_rcu"),
            Unit::Ms,
            (o, m::DRAIN),
            Some((u, m::DRAIN)),
            Target::None,
        );
    }
    g.row(
        &lbl(": last retire -> last free, vs our call_rcu"),
        Unit::Ms,
        (o, m::DRAIN),
        Some((oc, m::DRAIN)),
        Target::None,
    );
    g.row(
        &lbl(": last retire -> last free, vs crossbeam (pin+flush)"),
        Unit::Ms,
        (o, m::DRAIN),
        Some((cb, m::DRAIN)),
        Target::None,
    );
    g.row(
        &lbl(": retire loop, vs crossbeam"),
        Unit::Ms,
        (o, m::LOOP),
        Some((cb, m::LOOP)),
        Target::None,
    );
    out.push(g);

    // --- memory: 10M retired objects while a reader stalls ------------------------------------
    let mut g = Group::new("mem_stall");
    g.max_rounds(3);
    let o = mem_subject(&mut g, "ours kfree_rcu, cap 128 MiB", "kfree_stall");
    let o16 = mem_subject(&mut g, "ours kfree_rcu, cap 16 MiB", "kfree_stall_16m");
    let cb = mem_subject(&mut g, "crossbeam-epoch defer, pinned reader", "cb_stall");
    #[cfg(rcu_have_liburcu)]
    let u = Some(mem_subject(&mut g, "liburcu memb call_rcu", "urcu_stall"));
    #[cfg(not(rcu_have_liburcu))]
    let u: Option<usize> = None;
    let cap = (kfree_batch::DEFAULT_PENDING_CAP >> 20) as f64;
    g.row(
        &lbl(", stalled reader, cap 128 MiB: peak pending, vs crossbeam"),
        Unit::MiB,
        (o, m::PEAK_PENDING),
        Some((cb, m::PEAK_PENDING)),
        Target::AbsLe(cap),
    );
    g.row(
        &lbl(", stalled reader, cap 128 MiB: peak RSS growth, vs crossbeam"),
        Unit::MiB,
        (o, m::PEAK_RSS),
        Some((cb, m::PEAK_RSS)),
        Target::AbsLe(cap),
    );
    if let Some(u) = u {
        g.row(
            &lbl(", stalled reader, cap 128 MiB: peak RSS growth, vs liburcu call_rcu"),
            Unit::MiB,
            (o, m::PEAK_RSS),
            Some((u, m::PEAK_RSS)),
            Target::None,
        );
    }
    g.row(
        &lbl(", stalled reader, cap 16 MiB: peak pending, vs crossbeam"),
        Unit::MiB,
        (o16, m::PEAK_PENDING),
        Some((cb, m::PEAK_PENDING)),
        Target::AbsLe(16.0),
    );
    g.row(
        &lbl(", stalled reader, cap 16 MiB: peak RSS growth, vs crossbeam"),
        Unit::MiB,
        (o16, m::PEAK_RSS),
        Some((cb, m::PEAK_RSS)),
        Target::AbsLe(16.0),
    );
    g.row(
        "pending object, reader stalled: batcher bytes beyond its heap chunk",
        Unit::Bytes,
        (o, m::OVERHEAD),
        None,
        Target::AbsLe(10.0),
    );
    g.row(
        "pending object, reader stalled: RSS per object, vs crossbeam",
        Unit::Bytes,
        (o, m::RSS_PER_OBJ),
        Some((cb, m::RSS_PER_OBJ)),
        Target::None,
    );
    if let Some(u) = u {
        g.row(
            "pending object, reader stalled: RSS per object, vs liburcu call_rcu",
            Unit::Bytes,
            (o, m::RSS_PER_OBJ),
            Some((u, m::RSS_PER_OBJ)),
            Target::None,
        );
    }
    g.row(
        "stalled reader, cap 128 MiB: retire loop, vs crossbeam",
        Unit::Ms,
        (o, m::LOOP),
        Some((cb, m::LOOP)),
        Target::None,
    );
    g.row(
        "stalled reader, cap 128 MiB: reader held, vs crossbeam",
        Unit::Ms,
        (o, m::HELD),
        Some((cb, m::HELD)),
        Target::None,
    );
    if let Some(u) = u {
        g.row(
            "stalled reader, cap 128 MiB: reader held, vs liburcu call_rcu",
            Unit::Ms,
            (o, m::HELD),
            Some((u, m::HELD)),
            Target::None,
        );
    }
    g.row(
        "stalled reader, cap 128 MiB: callers that waited (fallback_sync)",
        Unit::Count,
        (o, m::FALLBACK),
        None,
        Target::None,
    );
    g.row(
        "stalled reader, cap 128 MiB: last retire -> last free, vs crossbeam",
        Unit::Ms,
        (o, m::DRAIN),
        Some((cb, m::DRAIN)),
        Target::None,
    );
    out.push(g);

    // --- slab: alloc+free of 64-byte objects, one thread ---------------------------------------
    let mut g = Group::new("slab");
    let sn = sz.slab;
    let plain = ours::cache64("compare-plain-64", false);
    let o = g.subject("ours KmemCache", move || {
        ours::kmem_pairs(plain.as_ref(), sn)
    });
    let typesafe = ours::cache64("compare-typesafe-64", true);
    let ot = g.subject("ours KmemCache typesafe", move || {
        ours::kmem_pairs(typesafe.as_ref(), sn)
    });
    let ok = g.subject("ours kmalloc(64)", move || ours::kmalloc_pairs(sn));
    let bx = g.subject("Rust Box<[u8;64]>", move || baselines::glibc::box_pairs(sn));
    let gm = g.subject("glibc malloc(64)", move || {
        baselines::glibc::malloc_pairs(sn)
    });
    g.row(
        "KmemCache alloc+free 64 B, vs Rust Box",
        Unit::Ns,
        o,
        Some(bx),
        Target::RatioLe(0.5),
    );
    g.row(
        "KmemCache alloc+free 64 B, vs glibc malloc+free",
        Unit::Ns,
        o,
        Some(gm),
        Target::None,
    );
    g.row(
        "KmemCache typesafe alloc+free 64 B, vs plain KmemCache",
        Unit::Ns,
        ot,
        Some(o),
        Target::RatioLe(1.1),
    );
    g.row(
        "kmalloc(64)+kfree, vs glibc malloc(64)+free",
        Unit::Ns,
        ok,
        Some(gm),
        Target::RatioLe(0.8),
    );
    out.push(g);

    // --- slab: producer/consumer (alloc on one thread, free on the other) -------------------------
    let mut g = Group::new("slab_pc");
    let pn = sz.pc;
    let plain = ours::cache64("compare-pc-64", false);
    let o = g.subject("ours KmemCache p/c", move || {
        ours::kmem_producer_consumer(plain.as_ref(), pn)
    });
    let ok = g.subject("ours kmalloc p/c", move || {
        ours::kmalloc_producer_consumer(pn)
    });
    let gm = g.subject("glibc malloc p/c", move || {
        baselines::glibc::malloc_producer_consumer(pn)
    });
    g.row(
        "producer/consumer 64 B, 2 thr: KmemCache vs glibc",
        Unit::Ns,
        o,
        Some(gm),
        Target::RatioLe(1.0),
    );
    g.row(
        "producer/consumer 64 B, 2 thr: kmalloc vs glibc",
        Unit::Ns,
        ok,
        Some(gm),
        Target::RatioLe(1.0),
    );
    out.push(g);

    out
}
