//! Terminating the translated sockets to given backends: BPF iterators find them,
//! sock_diag destroys them.

use std::io::Read;

use aya::{
    maps::{HashMap, MapData, MapError},
    programs::Iter,
    Btf, Ebpf,
};
use failoverd_shared::{map_names, DoomedSocket, MAX_TERMINATE_TARGETS};

use super::{
    links::program_error,
    sockdiag::{Destroyed, SockDiag},
    DatapathError,
};
use crate::datapath::Terminated;

/// The iterator programs and the kernel iterator each runs over.
const ITERATORS: [(&str, &str); 2] = [("fo_iter_tcp", "tcp"), ("fo_iter_udp", "udp")];

/// Loads the iterator programs (before the maps are taken out of `ebpf`).
pub fn load(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let btf = Btf::from_sys_fs().map_err(|e| DatapathError::Program {
        op: "reading kernel BTF for",
        program: "fo_iter_tcp",
        source: Box::new(aya::programs::ProgramError::Btf(e)),
    })?;
    for (name, kind) in ITERATORS {
        iterator(ebpf, name)?
            .load(kind, &btf)
            .map_err(program_error("loading", name))?;
    }
    Ok(())
}

/// The iterator program called `name` in `ebpf`.
fn iterator<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Iter, DatapathError> {
    ebpf.program_mut(name)
        .ok_or_else(|| DatapathError::Program {
            op: "finding",
            program: name,
            source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
        })?
        .try_into()
        .map_err(program_error("typing", name))
}

/// What terminating needs: the targets map the iterators read.
pub struct Terminator {
    targets: HashMap<MapData, u32, u8>,
}

impl Terminator {
    /// Wraps the targets map taken from the loaded object.
    pub fn new(targets: HashMap<MapData, u32, u8>) -> Self {
        Terminator { targets }
    }

    /// Aborts every translated socket to one of `backend_ids`, in this network namespace.
    pub fn run(
        &mut self,
        ebpf: &mut Ebpf,
        backend_ids: &[u32],
    ) -> Result<Terminated, DatapathError> {
        let mut done = Terminated::default();
        for chunk in backend_ids.chunks(MAX_TERMINATE_TARGETS as usize) {
            for id in chunk {
                self.targets
                    .insert(id, 1, 0)
                    .map_err(DatapathError::map("writing", map_names::TERMINATE))?;
            }
            let pass = doomed_sockets(ebpf).and_then(|doomed| destroy_all(&doomed));
            // The targets go whatever happened: a later pass must not abort them again.
            for id in chunk {
                match self.targets.remove(id) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => {
                        tracing::warn!(id, error = %e, "could not clear a termination target")
                    }
                }
            }
            let pass = pass?;
            done.tcp += pass.tcp;
            done.udp += pass.udp;
        }
        Ok(done)
    }
}

/// Runs both iterators once and collects the sockets they report.
fn doomed_sockets(ebpf: &mut Ebpf) -> Result<Vec<DoomedSocket>, DatapathError> {
    let mut doomed = Vec::new();
    for (name, _) in ITERATORS {
        let program = iterator(ebpf, name)?;
        let id = program.attach().map_err(program_error("attaching", name))?;
        let link = program
            .take_link(id)
            .map_err(program_error("taking link of", name))?;
        let io = |source| DatapathError::Io {
            op: "reading iterator",
            path: name.into(),
            source,
        };
        let mut file = link.into_file().map_err(|e| io(std::io::Error::other(e)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let size = std::mem::size_of::<DoomedSocket>();
        doomed.extend(bytes.chunks_exact(size).map(|record| {
            // SAFETY: a whole record of plain old data; unaligned read.
            unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<DoomedSocket>()) }
        }));
    }
    Ok(doomed)
}

fn destroy_all(doomed: &[DoomedSocket]) -> Result<Terminated, DatapathError> {
    let mut done = Terminated::default();
    if doomed.is_empty() {
        return Ok(done);
    }
    let io = |source| DatapathError::Io {
        op: "destroying sockets through",
        path: "sock_diag (SOCK_DESTROY)".into(),
        source,
    };
    let mut diag = SockDiag::open().map_err(io)?;
    for socket in doomed {
        match diag.destroy(socket).map_err(io)? {
            Destroyed::Gone => {}
            Destroyed::Yes if i32::from(socket.proto) == libc::IPPROTO_UDP => done.udp += 1,
            Destroyed::Yes => done.tcp += 1,
        }
    }
    Ok(done)
}
