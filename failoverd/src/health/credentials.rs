//! Passwords for the database checks: read from `password_file` at each probe (so a
//! rotated password is picked up without a reload), never held in the config, never logged.

use std::{
    collections::HashSet,
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock, PoisonError},
};

use super::ProbeError;

/// Reads the password in `path`: the whole file less one trailing newline (`\n` or
/// `\r\n`), so `echo secret > file` works and a password may still contain spaces.
/// Warns once per path when the file is readable by its group or by everyone.
pub(super) async fn read_password(path: &Path) -> Result<String, ProbeError> {
    let failed = |source| ProbeError::Credentials {
        path: path.to_path_buf(),
        source,
    };
    let metadata = tokio::fs::metadata(path).await.map_err(failed)?;
    if metadata.permissions().mode() & 0o044 != 0 {
        warn_once(path, metadata.permissions().mode());
    }
    let bytes = tokio::fs::read(path).await.map_err(failed)?;
    let mut text = String::from_utf8(bytes).map_err(|_| {
        failed(io::Error::new(
            io::ErrorKind::InvalidData,
            "the password is not UTF-8",
        ))
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// Reads the password when the check names a file; `None` otherwise.
pub(super) async fn read_optional(path: Option<&Path>) -> Result<Option<String>, ProbeError> {
    match path {
        Some(path) => read_password(path).await.map(Some),
        None => Ok(None),
    }
}

fn warn_once(path: &Path, mode: u32) {
    static WARNED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    let first = WARNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(path.to_path_buf());
    if first {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", mode & 0o777),
            "password file is readable by other users; chmod 600 it"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A password file in a directory of its own, removed on drop.
    struct TempFile(PathBuf);

    impl std::ops::Deref for TempFile {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                if let Err(e) = fs::remove_dir_all(dir) {
                    eprintln!("cannot remove {}: {e}", dir.display());
                }
            }
        }
    }

    fn temp(name: &str, content: &[u8], mode: u32) -> TempFile {
        let dir =
            std::env::temp_dir().join(format!("failoverd-cred-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        TempFile(path)
    }

    #[tokio::test]
    async fn strips_one_trailing_newline_and_keeps_spaces() {
        let path = temp("newline", b"s3cret pass\n", 0o600);
        assert_eq!(read_password(&path).await.unwrap(), "s3cret pass");
        let path = temp("crlf", b"x\r\n", 0o600);
        assert_eq!(read_password(&path).await.unwrap(), "x");
        let path = temp("two", b"x\n\n", 0o600);
        assert_eq!(read_password(&path).await.unwrap(), "x\n");
    }

    #[tokio::test]
    async fn a_missing_file_is_a_credentials_failure_naming_it() {
        let path = PathBuf::from("/nonexistent/failoverd/pw");
        let err = read_password(&path).await.unwrap_err();
        assert_eq!(err.reason(), "credentials");
        assert_eq!(
            err.to_string(),
            "cannot read the password file /nonexistent/failoverd/pw"
        );
    }

    /// A log sink for one test.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_file_others_can_read_works_and_is_warned_about_once() {
        let logs = Captured::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);

        let private = temp("private", b"pw", 0o600);
        assert_eq!(read_password(&private).await.unwrap(), "pw");
        let shared = temp("group", b"hunter2", 0o640);
        assert_eq!(read_password(&shared).await.unwrap(), "hunter2");
        assert_eq!(read_password(&shared).await.unwrap(), "hunter2");

        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("readable by other users").count(), 1, "{text}");
        assert!(text.contains(&shared.display().to_string()), "{text}");
        assert!(text.contains("mode=640"), "{text}");
        assert!(!text.contains("hunter2"), "the password was logged: {text}");
    }
}
