//! Agent memory: the RSS and heap a running agent adds with 100 tracepoints installed on 100
//! sites (each a COUNTER with two path labels, a path value and a condition) and hit (target
//! ≤ 5 MB RSS). A plain program, not a criterion bench: `cargo bench -p sonde-agent --bench
//! agent_memory` prints the figures.
//!
//! RSS is `VmRSS` from `/proc/self/status` (Linux; elsewhere only the heap figures print). The
//! heap figure is the live bytes a counting global allocator sees, which RSS rounds to pages and
//! blurs with allocator caching. Everything the agent needs lazily (the rhai engine, thread
//! locals, the registry's collector) is part of the overhead measured.

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::atomic::{AtomicIsize, Ordering},
    time::Instant,
};

use common::{Order, User};
use sonde_agent::{Site, probe};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// Safety: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees are the caller's; the counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        // Safety: forwarded as received (see the impl).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        // Safety: forwarded as received (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // Safety: forwarded as received (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // Safety: forwarded as received (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

macro_rules! site_fn {
    ($f:ident) => {
        #[inline(never)]
        fn $f(order: &Order, user: &User, total: f64) {
            probe!(order, user, total);
        }
    };
}

// One site per line: `line!()` in a macro is the line of the invocation.
site_fn!(s000);
site_fn!(s001);
site_fn!(s002);
site_fn!(s003);
site_fn!(s004);
site_fn!(s005);
site_fn!(s006);
site_fn!(s007);
site_fn!(s008);
site_fn!(s009);
site_fn!(s010);
site_fn!(s011);
site_fn!(s012);
site_fn!(s013);
site_fn!(s014);
site_fn!(s015);
site_fn!(s016);
site_fn!(s017);
site_fn!(s018);
site_fn!(s019);
site_fn!(s020);
site_fn!(s021);
site_fn!(s022);
site_fn!(s023);
site_fn!(s024);
site_fn!(s025);
site_fn!(s026);
site_fn!(s027);
site_fn!(s028);
site_fn!(s029);
site_fn!(s030);
site_fn!(s031);
site_fn!(s032);
site_fn!(s033);
site_fn!(s034);
site_fn!(s035);
site_fn!(s036);
site_fn!(s037);
site_fn!(s038);
site_fn!(s039);
site_fn!(s040);
site_fn!(s041);
site_fn!(s042);
site_fn!(s043);
site_fn!(s044);
site_fn!(s045);
site_fn!(s046);
site_fn!(s047);
site_fn!(s048);
site_fn!(s049);
site_fn!(s050);
site_fn!(s051);
site_fn!(s052);
site_fn!(s053);
site_fn!(s054);
site_fn!(s055);
site_fn!(s056);
site_fn!(s057);
site_fn!(s058);
site_fn!(s059);
site_fn!(s060);
site_fn!(s061);
site_fn!(s062);
site_fn!(s063);
site_fn!(s064);
site_fn!(s065);
site_fn!(s066);
site_fn!(s067);
site_fn!(s068);
site_fn!(s069);
site_fn!(s070);
site_fn!(s071);
site_fn!(s072);
site_fn!(s073);
site_fn!(s074);
site_fn!(s075);
site_fn!(s076);
site_fn!(s077);
site_fn!(s078);
site_fn!(s079);
site_fn!(s080);
site_fn!(s081);
site_fn!(s082);
site_fn!(s083);
site_fn!(s084);
site_fn!(s085);
site_fn!(s086);
site_fn!(s087);
site_fn!(s088);
site_fn!(s089);
site_fn!(s090);
site_fn!(s091);
site_fn!(s092);
site_fn!(s093);
site_fn!(s094);
site_fn!(s095);
site_fn!(s096);
site_fn!(s097);
site_fn!(s098);
site_fn!(s099);

type Hit = fn(&Order, &User, f64);
const HITS: [Hit; 100] = [
    s000, s001, s002, s003, s004, s005, s006, s007, s008, s009, s010, s011, s012, s013, s014, s015,
    s016, s017, s018, s019, s020, s021, s022, s023, s024, s025, s026, s027, s028, s029, s030, s031,
    s032, s033, s034, s035, s036, s037, s038, s039, s040, s041, s042, s043, s044, s045, s046, s047,
    s048, s049, s050, s051, s052, s053, s054, s055, s056, s057, s058, s059, s060, s061, s062, s063,
    s064, s065, s066, s067, s068, s069, s070, s071, s072, s073, s074, s075, s076, s077, s078, s079,
    s080, s081, s082, s083, s084, s085, s086, s087, s088, s089, s090, s091, s092, s093, s094, s095,
    s096, s097, s098, s099,
];

/// `VmRSS`, `RssAnon` and `RssFile` in KiB (Linux).
fn rss_kib() -> Option<[i64; 3]> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<i64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some([field("VmRSS:")?, field("RssAnon:")?, field("RssFile:")?])
}

struct Point {
    what: &'static str,
    rss_kib: Option<[i64; 3]>,
    heap: isize,
    peak: isize,
}

fn point(what: &'static str) -> Point {
    Point {
        what,
        rss_kib: rss_kib(),
        heap: LIVE.load(Ordering::Relaxed),
        peak: PEAK.load(Ordering::Relaxed),
    }
}

fn main() {
    // The sites of this file, in line order: the same order as `HITS`.
    let mut sites: Vec<&'static Site> = sonde_agent::sites()
        .filter(|s| s.names() == ["order", "user", "total"])
        .collect();
    sites.sort_by_key(|s| s.line());
    assert_eq!(sites.len(), 100);
    let order = Order {
        id: 1,
        total: 12.5,
        country: "NZ".into(),
    };
    let user = User {
        id: 2,
        tier: "gold".into(),
    };
    let tracepoints: Vec<_> = sites
        .iter()
        .enumerate()
        .map(|(i, site)| {
            common::counter_tracepoint(
                &format!("tp-{i:03}"),
                site,
                &format!("memory_{i:03}"),
                "total",
                vec![
                    common::label("country", "order.country"),
                    common::label("tier", "user.tier"),
                ],
                Some("total > 3"),
            )
        })
        .collect();
    for hit in HITS {
        hit(&order, &user, 12.5); // page the code in while disarmed
    }

    let mut points = vec![point("baseline (registry and tracepoint list built)")];
    let (agent, registry) = common::agent();
    points.push(point("agent started"));
    let started = Instant::now();
    agent.apply(tracepoints);
    let install = started.elapsed();
    common::assert_bound(&agent);
    assert!(sites.iter().all(|s| s.is_armed()));
    points.push(point("100 tracepoints installed"));
    for hit in HITS {
        hit(&order, &user, 12.5);
    }
    points.push(point("each site hit once"));
    for _ in 0..1000 {
        for hit in HITS {
            hit(black_box(&order), black_box(&user), black_box(12.5));
        }
    }
    points.push(point("each site hit 1,001 times"));
    let text = common::exposition(&registry);
    assert_eq!(
        text.matches(r#"{country="NZ",tier="gold"} 12512.5"#)
            .count(),
        100,
        "{text}"
    );
    drop(text);
    points.push(point("after one scrape"));
    agent.shutdown();
    points.push(point("agent shut down"));

    println!(
        "agent_memory: 100 tracepoints (COUNTER, 2 path labels, path value, condition) on 100 sites"
    );
    println!("  install (apply of 100): {install:?}");
    let base = &points[0];
    println!(
        "  {:<46} {:>8} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "", "RSS KiB", "ΔRSS KiB", "ΔAnon KiB", "ΔFile KiB", "Δheap KiB", "Δpeak KiB"
    );
    for p in &points {
        let (rss, d) = match (p.rss_kib, base.rss_kib) {
            (Some(a), Some(b)) => (
                a[0].to_string(),
                [a[0] - b[0], a[1] - b[1], a[2] - b[2]].map(|d| d.to_string()),
            ),
            _ => ("-".into(), ["-".to_owned(), "-".to_owned(), "-".to_owned()]),
        };
        println!(
            "  {:<46} {:>8} {:>9} {:>9} {:>9} {:>11} {:>11}",
            p.what,
            rss,
            d[0],
            d[1],
            d[2],
            (p.heap - base.heap) / 1024,
            (p.peak - base.peak) / 1024,
        );
    }
}
