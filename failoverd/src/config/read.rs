//! Reading the config file: only a regular file, at most [`MAX_FILE_SIZE`]
//! bytes, never blocking on a FIFO or a device, and off the async workers.

use std::{
    fs::OpenOptions,
    io::{self, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

use super::{error::ROOT_KEY, parse, Config, ConfigError};

/// Largest config file read: 16 MiB, several times a config of 65,536
/// services (the datapath's limit) with a backend each.
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// Reads and checks the configuration file at `path`.
///
/// The file must be a regular file (a symlink to one is fine) of at most
/// [`MAX_FILE_SIZE`] bytes, in UTF-8 (a leading byte-order mark is skipped).
/// Blocks the calling thread while parsing: from async code use [`load_async`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = read(path)?;
    parse_bytes(&bytes, path)
}

/// [`load`] on tokio's blocking pool, so that a large file does not stall the
/// async workers (and the probes on them) while it is parsed.
pub async fn load_async(path: &Path) -> Result<Config, ConfigError> {
    let owned = path.to_path_buf();
    match tokio::task::spawn_blocking(move || load(&owned)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime shuts down under the load.
        Err(e) => Err(ConfigError::Io {
            path: path.to_path_buf(),
            source: io::Error::other(e),
        }),
    }
}

/// Checks configuration bytes as [`load`] does after reading them.
pub(super) fn parse_bytes(bytes: &[u8], source: &Path) -> Result<Config, ConfigError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text, source),
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            // Everything before the bad byte is UTF-8, so lines and columns can be counted.
            let text = std::str::from_utf8(valid).unwrap_or_default();
            let line = text.matches('\n').count() + 1;
            let column = text.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            Err(ConfigError::Invalid {
                file: source.to_path_buf(),
                line,
                column,
                key: ROOT_KEY.to_owned(),
                message: format!(
                    "the file is not UTF-8: byte 0x{:02x} cannot start a character here",
                    bytes[e.valid_up_to()]
                ),
            })
        }
    }
}

/// The file's bytes, refusing what is not a regular file or is too large.
fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let io_error = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Looked at before opening: opening a device can have effects of its own.
    check_kind(path, &std::fs::metadata(path).map_err(io_error)?)?;
    // O_NONBLOCK: should a FIFO be swapped in after the look, open() returns
    // at once instead of waiting for a writer; the second look refuses it.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    check_kind(path, &meta)?;
    too_large(path, meta.len())?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte over the limit is enough to know; the file may grow meanwhile.
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    too_large(path, bytes.len() as u64)?;
    Ok(bytes)
}

fn check_kind(path: &Path, meta: &std::fs::Metadata) -> Result<(), ConfigError> {
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    };
    Err(ConfigError::NotAFile {
        path: path.to_path_buf(),
        kind,
    })
}

fn too_large(path: &Path, size: u64) -> Result<(), ConfigError> {
    if size <= MAX_FILE_SIZE {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
        key: ROOT_KEY.to_owned(),
        message: too_large_message(size),
    })
}

/// Why a file or text of `size` bytes is refused.
pub(super) fn too_large_message(size: u64) -> String {
    format!(
        "the config is {size} bytes, more than the limit of {} MiB ({MAX_FILE_SIZE} bytes)",
        MAX_FILE_SIZE / (1024 * 1024)
    )
}
