//! Attaching the hooks to the cgroup through pinned BPF links, or adopting the links already pinned.

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::FdLink, loaded_programs, CgroupAttachMode, CgroupSockAddr, Program, ProgramError,
        ProgramFd, ProgramInfo, SockOps,
    },
    Ebpf,
};

use super::{sys, DatapathError};

/// One cgroup hook: a program of the BPF object and where it attaches.
pub struct Hook {
    /// Function name in `bpf/failoverd.bpf.c`.
    pub program: &'static str,
    /// `enum bpf_attach_type` value the kernel reports for it.
    pub kernel_attach_type: u32,
}

/// `BPF_CGROUP_SOCK_OPS`.
const SOCK_OPS_ATTACH_TYPE: u32 = 3;

/// Every hook, reverse translation first: by the time connect() starts
/// translating, getpeername and recvmsg already undo it, and sock_ops already
/// watches the sockets it marks.
pub const HOOKS: [Hook; 9] = [
    Hook {
        program: "fo_getpeername4",
        kernel_attach_type: 29,
    },
    Hook {
        program: "fo_getpeername6",
        kernel_attach_type: 30,
    },
    Hook {
        program: "fo_recvmsg4",
        kernel_attach_type: 19,
    },
    Hook {
        program: "fo_recvmsg6",
        kernel_attach_type: 20,
    },
    Hook {
        program: "fo_sockops",
        kernel_attach_type: SOCK_OPS_ATTACH_TYPE,
    },
    Hook {
        program: "fo_sendmsg4",
        kernel_attach_type: 14,
    },
    Hook {
        program: "fo_sendmsg6",
        kernel_attach_type: 15,
    },
    Hook {
        program: "fo_connect4",
        kernel_attach_type: 10,
    },
    Hook {
        program: "fo_connect6",
        kernel_attach_type: 11,
    },
];

/// A loaded program of one of the two cgroup kinds failoverd attaches.
pub enum CgroupProgram<'a> {
    /// connect/sendmsg/recvmsg/getpeername hooks.
    SockAddr(&'a mut CgroupSockAddr),
    /// The sock_ops program (kernel-observed connect outcomes).
    SockOps(&'a mut SockOps),
}

impl<'a> CgroupProgram<'a> {
    /// The program called `name` in `ebpf`, typed by what it is.
    pub fn find(ebpf: &'a mut Ebpf, name: &'static str) -> Result<Self, DatapathError> {
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| missing_program(name))?;
        Ok(match program {
            Program::SockOps(p) => CgroupProgram::SockOps(p),
            other => {
                CgroupProgram::SockAddr(other.try_into().map_err(program_error("typing", name))?)
            }
        })
    }

    /// Loads it into the kernel.
    pub fn load(&mut self) -> Result<(), ProgramError> {
        match self {
            CgroupProgram::SockAddr(p) => p.load(),
            CgroupProgram::SockOps(p) => p.load(),
        }
    }

    fn info(&self) -> Result<ProgramInfo, ProgramError> {
        match self {
            CgroupProgram::SockAddr(p) => p.info(),
            CgroupProgram::SockOps(p) => p.info(),
        }
    }

    fn fd(&self) -> Result<&ProgramFd, ProgramError> {
        match self {
            CgroupProgram::SockAddr(p) => p.fd(),
            CgroupProgram::SockOps(p) => p.fd(),
        }
    }

    /// Attaches it to a cgroup through a BPF link and hands the link over.
    fn attach_link(
        &mut self,
        cgroup: &std::fs::File,
        program: &'static str,
        pin: &Path,
    ) -> Result<FdLink, DatapathError> {
        let converted = |e: aya::programs::links::LinkError| DatapathError::Link {
            op: "converting",
            path: pin.to_path_buf(),
            source: std::io::Error::other(e),
        };
        match self {
            CgroupProgram::SockAddr(p) => {
                let id = p
                    .attach(cgroup, CgroupAttachMode::Single)
                    .map_err(program_error("attaching", program))?;
                let link = p
                    .take_link(id)
                    .map_err(program_error("taking link of", program))?;
                link.try_into().map_err(converted)
            }
            CgroupProgram::SockOps(p) => {
                let id = p
                    .attach(cgroup, CgroupAttachMode::Single)
                    .map_err(program_error("attaching", program))?;
                let link = p
                    .take_link(id)
                    .map_err(program_error("taking link of", program))?;
                link.try_into().map_err(converted)
            }
        }
    }
}

/// Where a hook's link is pinned.
pub fn link_pin_path(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join("links").join(program)
}

/// What attaching did, hook by hook.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AttachReport {
    /// Hooks attached anew (and pinned).
    pub attached: usize,
    /// Pinned links whose program was swapped for this build's with BPF_LINK_UPDATE.
    pub updated: usize,
    /// Pinned links already running this build's program on these maps.
    pub kept: usize,
}

/// Attaches every hook to `cgroup`, adopting links already pinned under `pin_dir`.
///
/// A pinned link must be attached to the same cgroup with the same attach
/// type; its program is swapped in place (no moment without a hook) when the
/// instructions or the maps differ from the freshly loaded one.
pub fn attach_all(
    ebpf: &mut Ebpf,
    cgroup: &Path,
    pin_dir: &Path,
) -> Result<AttachReport, DatapathError> {
    let links_dir = pin_dir.join("links");
    std::fs::create_dir_all(&links_dir).map_err(DatapathError::io("creating", &links_dir))?;
    let cgroup_id = super::cgroup::cgroup_id(cgroup)?;
    let cgroup_file =
        std::fs::File::open(cgroup).map_err(DatapathError::io("opening cgroup", cgroup))?;
    let mut report = AttachReport::default();

    for hook in &HOOKS {
        let mut program = CgroupProgram::find(ebpf, hook.program)?;
        let pin = link_pin_path(pin_dir, hook.program);
        if pin.exists() {
            if adopt(&program, hook, &pin, pin_dir, cgroup_id, cgroup)? {
                report.updated += 1;
            } else {
                report.kept += 1;
            }
            continue;
        }
        let link = program.attach_link(&cgroup_file, hook.program, &pin)?;
        link.pin(&pin).map_err(|source| DatapathError::Pin {
            path: pin.clone(),
            source,
        })?;
        report.attached += 1;
    }
    Ok(report)
}

/// Checks a pinned link and swaps its program when it differs. Returns whether it swapped.
fn adopt(
    program: &CgroupProgram<'_>,
    hook: &Hook,
    pin: &Path,
    pin_dir: &Path,
    cgroup_id: u64,
    cgroup: &Path,
) -> Result<bool, DatapathError> {
    let link_err = |op| {
        move |source| DatapathError::Link {
            op,
            path: pin.to_path_buf(),
            source,
        }
    };
    let link = sys::obj_get(pin).map_err(link_err("opening"))?;
    let info = sys::cgroup_link_info(link.as_fd()).map_err(link_err("reading info of"))?;
    let foreign = |detail| DatapathError::ForeignLink {
        path: pin.to_path_buf(),
        pin_dir: pin_dir.to_path_buf(),
        detail,
    };
    if info.cgroup_id != cgroup_id {
        return Err(foreign(format!(
            "is attached to cgroup id {}, not to {} (id {cgroup_id})",
            info.cgroup_id,
            cgroup.display()
        )));
    }
    if info.attach_type != hook.kernel_attach_type {
        return Err(foreign(format!(
            "has attach type {}, expected {} for {}",
            info.attach_type, hook.kernel_attach_type, hook.program
        )));
    }

    let new = program
        .info()
        .map_err(program_error("reading info of", hook.program))?;
    let new_maps = new
        .map_ids()
        .map_err(program_error("reading maps of", hook.program))?;
    let old = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == info.prog_id);
    let unchanged = match &old {
        Some(old) => {
            old.tag() == new.tag()
                && old
                    .map_ids()
                    .map_err(program_error("reading maps of", hook.program))?
                    == new_maps
        }
        None => false,
    };
    if unchanged {
        return Ok(false);
    }
    let fd = program
        .fd()
        .map_err(program_error("getting fd of", hook.program))?;
    sys::link_update(link.as_fd(), fd.as_fd()).map_err(link_err("BPF_LINK_UPDATE"))?;
    tracing::info!(program = hook.program, link = %pin.display(), "swapped the program behind a pinned link");
    Ok(true)
}

fn missing_program(program: &'static str) -> DatapathError {
    DatapathError::Program {
        op: "finding",
        program,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

/// A program error with context, turning verifier rejections into [`DatapathError::Verifier`].
pub fn program_error(
    op: &'static str,
    program: &'static str,
) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError {
    move |e| match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => DatapathError::Verifier {
            program,
            source: io_error,
            log: verifier_log.to_string(),
        },
        other => DatapathError::Program {
            op,
            program,
            source: Box::new(other),
        },
    }
}

/// Detaches and unpins every hook link under `pin_dir`; returns how many were removed.
pub fn detach_all(pin_dir: &Path) -> Result<usize, DatapathError> {
    let mut removed = 0;
    for hook in &HOOKS {
        let pin = link_pin_path(pin_dir, hook.program);
        if !pin.exists() {
            continue;
        }
        let link = sys::obj_get(&pin).map_err(|source| DatapathError::Link {
            op: "opening",
            path: pin.clone(),
            source,
        })?;
        // Detach first: a running daemon may still hold the link open, and
        // unpinning alone would leave the hook attached until it exits.
        sys::link_detach(link.as_fd()).map_err(|source| DatapathError::Link {
            op: "detaching",
            path: pin.clone(),
            source,
        })?;
        std::fs::remove_file(&pin).map_err(DatapathError::io("removing", &pin))?;
        removed += 1;
    }
    Ok(removed)
}
