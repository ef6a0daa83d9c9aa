//! The `failoverd` binary: parses the command line, sets up logging and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use failoverd::cli::{self, Cli, Command};

/// jemalloc, not glibc's malloc: at 10,000 VIPs × 8 backends glibc kept about 10 MB of free
/// chunks resident between live ones after the start's burst (84.0 MiB VmRSS for 62 MB in
/// use, even trimmed once ready); jemalloc configured as [`MALLOC_CONF`] says holds 77.7–79.1
/// MiB over six runs, and the daemon's CPU at that size went from 0.20–0.24 to 0.14–0.18
/// cores (docs/benchmarks.md, daemon memory).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts (its `malloc_conf` symbol; an operator can
/// still override them with `_RJEM_MALLOC_CONF` in the environment):
/// - `narenas:1`: one arena for every thread (each thread's small allocations come from its
///   own cache anyway); one arena per core leaves more half-empty pages.
/// - `dirty_decay_ms:1000`: pages freed are handed back to the kernel within about a second
///   (the default waits ten), so what a start or a reload frees leaves RSS soon.
/// - `muzzy_decay_ms:0`: handed back at once with `MADV_DONTNEED`, not first as `MADV_FREE`,
///   which the kernel keeps counting in RSS until memory runs short: RSS says what is held.
#[used]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: ConfString =
    ConfString(c"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string pointer that may sit in a `static` (jemalloc reads it as `const char *`).
#[repr(transparent)]
struct ConfString(*const std::ffi::c_char);

// SAFETY: it points at a string literal, which is immutable and lives as long as the program.
unsafe impl Sync for ConfString {}

fn main() -> ExitCode {
    // The CLI ends quietly when its reader goes away (`failoverd status | head -1`), like other
    // Unix tools, instead of panicking in println!; set before clap can print --help.
    set_sigpipe(libc::SIG_DFL);
    let cli = Cli::parse();
    let daemon = matches!(
        cli.command,
        Command::Run(_) | Command::Demo(_) | Command::DemoClient(_)
    );
    if daemon {
        // A long-running process with sockets: a peer that hangs up is an EPIPE to handle, not
        // a signal that kills it (std's default before main).
        set_sigpipe(libc::SIG_IGN);
    }
    cli::logs::init(&cli.command.log_args());
    if let Command::Run(_) = cli.command {
        failoverd::panics::install();
        raise_nofile();
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = cli::exit::code(e.as_ref());
            // An error may quote a name or a daemon's message: show control characters, do not
            // send them to the terminal.
            eprintln!(
                "failoverd: {}",
                failoverd::cli::render::terminal_safe_lines(&e.to_string())
            );
            ExitCode::from(code)
        }
    }
}

fn set_sigpipe(action: libc::sighandler_t) {
    // SAFETY: called on the main thread before any other thread exists; SIG_DFL and SIG_IGN
    // are valid dispositions for SIGPIPE.
    if unsafe { libc::signal(libc::SIGPIPE, action) } == libc::SIG_ERR {
        eprintln!(
            "failoverd: cannot set the SIGPIPE disposition: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The daemon takes every descriptor its hard limit allows (see `failoverd::limits`).
fn raise_nofile() {
    match failoverd::limits::raise_nofile() {
        Ok(l) if l.after < 4096 => tracing::warn!(
            soft = l.after,
            hard = l.hard,
            "the file descriptor limit is low; set LimitNOFILE= (the unit sets 65536)"
        ),
        Ok(l) => tracing::info!(
            before = l.before,
            soft = l.after,
            hard = l.hard,
            "file descriptor limit"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the soft file descriptor limit to the hard one")
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    // Every error type here already names its cause in its message, so main
    // prints `{e}` once rather than a context chain that repeats it.
    match command {
        Command::Run(args) => Ok(cli::run::run(&args)?),
        Command::Check(args) => Ok(cli::check::run(&args)?),
        Command::Status(args) => Ok(cli::status::run(&args)?),
        Command::Drain(args) => Ok(cli::drain::run(&args)?),
        Command::Undrain(args) => Ok(cli::drain::run_undrain(&args)?),
        Command::Failback(args) => Ok(cli::failback::run(&args)?),
        Command::Reload(args) => Ok(cli::reload::run(&args)?),
        Command::Explain(args) => Ok(cli::explain::run(&args)?),
        Command::Events(args) => Ok(cli::events::run(&args)?),
        Command::Vip(c) => Ok(cli::vip::run(&c)?),
        Command::Fleet(c) => Ok(cli::fleet::run(&c)?),
        Command::Cleanup(args) => cli::cleanup::run(&args).map(drop).map_err(Into::into),
        Command::Completions(args) => {
            cli::docs::completions(&args);
            Ok(())
        }
        Command::Man => Ok(cli::docs::man()?),
        Command::Demo(args) => cli::demo::run(&args),
        Command::DemoClient(args) => cli::demo::run_client(&args),
    }
}
