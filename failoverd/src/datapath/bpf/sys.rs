//! The few BPF and capability syscalls aya 0.14 has no public API for.

use std::{
    ffi::CString,
    io, mem,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, initialised repr(C) struct of the layout the
    // kernel expects for `cmd`, and its exact size is passed with it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `bpf_attr` for BPF_OBJ_GET.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned BPF object (here: a link) by its bpffs path.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `bpf_attr.link_update`.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Swaps the program behind a link in one step: no moment without a program.
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new_prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Detaches a link even when other processes still hold it open.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr: u32 = link.as_raw_fd() as u32;
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// What the kernel says of a cgroup link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLinkInfo {
    /// Id of the program behind the link.
    pub prog_id: u32,
    /// Id (inode number) of the cgroup it is attached to.
    pub cgroup_id: u64,
    /// `enum bpf_attach_type` of the attachment.
    pub attach_type: u32,
}

/// `bpf_attr.info`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info` as far as its cgroup member: type, id, prog_id, then
/// an 8-aligned union whose cgroup member is `{ __u64 cgroup_id; __u32 attach_type; }`.
#[repr(C)]
#[derive(Default)]
struct LinkInfoRaw {
    link_type: u32,
    id: u32,
    prog_id: u32,
    pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    /// Room for the union's larger members, which the kernel may fill.
    rest: [u32; 25],
}

/// Reads what the kernel says of a cgroup link.
pub fn cgroup_link_info(link: BorrowedFd<'_>) -> io::Result<CgroupLinkInfo> {
    let mut info = LinkInfoRaw::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: mem::size_of::<LinkInfoRaw>() as u32,
        info: &mut info as *mut LinkInfoRaw as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(CgroupLinkInfo {
        prog_id: info.prog_id,
        cgroup_id: info.cgroup_id,
        attach_type: info.attach_type,
    })
}

/// `bpf_attr.batch`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads a per-CPU array of `T` whole, `batch` ids per syscall, calling `each(id, per_cpu)`
/// with the values of every possible CPU (aya 0.14 reads one id per syscall: 262,144
/// syscalls for the counters map).
pub fn per_cpu_array_for_each<T: aya::Pod + Default>(
    map: BorrowedFd<'_>,
    cpus: usize,
    batch: u32,
    mut each: impl FnMut(u32, &[T]),
) -> io::Result<()> {
    // The kernel copies each CPU's value at an 8-byte stride.
    if !mem::size_of::<T>().is_multiple_of(8) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "per-CPU value size is not a multiple of 8",
        ));
    }
    let mut keys = vec![0u32; batch as usize];
    let mut values = vec![T::default(); batch as usize * cpus];
    let mut out_batch = 0u32;
    let mut first = true;
    loop {
        let in_batch = out_batch;
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &in_batch as *const u32 as u64
            },
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch,
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        first = false;
        // ENOENT: the last batch, possibly partial, was copied.
        let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        for (i, id) in keys.iter().take(attr.count as usize).enumerate() {
            each(*id, &values[i * cpus..(i + 1) * cpus]);
        }
        if done || attr.count == 0 {
            return Ok(());
        }
    }
}

/// Capabilities the datapath needs, by bit number (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
/// Mounting bpffs and, on old kernels, everything BPF.
pub const CAP_SYS_ADMIN: u32 = 21;
/// Loading BPF programs and creating maps.
pub const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from /proc/self/status.
pub fn effective_capabilities() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no CapEff line in /proc/self/status",
            )
        })
}
