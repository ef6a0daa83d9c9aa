//! The kernel's run-time statistics of the programs a bench attached to its own cgroup: which
//! programs those are (`BPF_PROG_QUERY`), and their calls and run time (`bpf_stats`).

use std::{fs::File, io, os::fd::AsRawFd, path::Path};

/// `BPF_PROG_QUERY` in `linux/bpf.h`.
const BPF_PROG_QUERY: libc::c_long = 16;
/// `enum bpf_attach_type` values of the programs the benches measure.
pub const BPF_CGROUP_SOCK_OPS: u32 = 3;
/// See [`BPF_CGROUP_SOCK_OPS`].
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
/// See [`BPF_CGROUP_SOCK_OPS`].
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;

/// `union bpf_attr` as `BPF_PROG_QUERY` reads it (the kernel accepts a shorter attr than its
/// own, and zero in every field we leave out).
#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
}

/// Ids of the programs of `attach_type` attached to the cgroup at `cgroup` (aya 0.14 has no
/// public query for cgroup socket programs, hence the raw syscall).
pub fn attached(cgroup: &Path, attach_type: u32) -> io::Result<Vec<u32>> {
    let dir = File::open(cgroup)?;
    let mut ids = [0u32; 8];
    let mut attr = ProgQueryAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..ProgQueryAttr::default()
    };
    // SAFETY: attr is a valid, writable bpf_attr prefix of the size passed; prog_ids points at
    // `prog_cnt` writable u32s that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut ProgQueryAttr,
            std::mem::size_of::<ProgQueryAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ids[..(attr.prog_cnt as usize).min(ids.len())].to_vec())
}

/// Calls and total run time (ns) of the programs `ids`, the bench's own: other runs on the
/// machine load programs of the same names into cgroups of their own. Counted only while
/// `aya::sys::enable_stats(Stats::RunTime)` is held.
pub fn run_stats(ids: &[u32]) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .fold((0, 0), |(n, t), p| {
            (n + p.run_count(), t + p.run_time().as_nanos() as u64)
        })
}
