//! Keeps the daemon's resident memory close to what it holds: glibc's malloc keeps freed
//! memory in its arenas, and a daemon whose start frees tens of megabytes (the config's
//! parse, every service's first decisions) would otherwise keep them resident for good.
//!
//! Measured at 10,000 VIPs × 8 backends (docs/benchmarks.md, daemon memory): after start
//! glibc held ~117 MB for ~96 MB in use, the rest free chunks between live ones, spread over
//! one arena per thread that ever allocated; capping the arenas and trimming once ready took
//! VmRSS from 129.1 to 118.8 MiB.
//!
//! Elsewhere than glibc both are no-ops.

/// Arenas glibc may create: its default is 8 per core, one per thread that ever allocates.
/// One: every thread's small allocations come from its own cache (tcache) anyway, and fewer
/// arenas leave fewer half-empty ones. At 10,000 VIPs one run with one arena held 96.9 MiB,
/// one with two 99.2, for the same CPU (0.21, 0.20 cores); runs of one build differ by up to
/// 8 MiB, so that is a hint, not a proof.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 1;

/// Caps glibc's malloc arenas (see [`ARENAS`]). Call it first thing, before any thread.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; called before other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Hands the free memory in glibc's arenas back to the kernel (`malloc_trim(0)`: the top of
/// each arena and every free page inside one). A few milliseconds at 10,000 services; call it
/// after work that frees much (the start, a reload), not on a hot path.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the arenas' locks itself and frees nothing in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
