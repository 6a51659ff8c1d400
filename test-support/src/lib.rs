//! Helpers shared by the integration tests and the tools (`rcutorture`, `compare`) of the rcu-kit
//! workspace: running a child process with a deadline checked from outside (a test case of the
//! current test binary — for process-wide settings, memory limits, expected panics and hang
//! detection — or any command), setting `RLIMIT_AS`, reading memory figures (peak RSS), and a
//! single-producer single-consumer [`ring::Ring`] for producer/consumer figures.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod layering;
pub mod pausing_alloc;
pub mod ring;

/// Environment variable naming the case a child process should run.
pub const CHILD_ENV: &str = "RCU_TEST_CHILD";

/// The case this process should run as a child, if any.
pub fn child_case() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Runs test `test_name` of the current test binary in a child process with `RCU_TEST_CHILD=case`
/// and extra environment; kills it and panics if it runs past `deadline`.
pub fn run_child(test_name: &str, case: &str, env: &[(&str, &str)], deadline: Duration) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, case);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_with_deadline(&mut cmd, deadline).expect("spawn child test process");
    match out.status {
        Some(status) => Output {
            status,
            stdout: out.stdout,
            stderr: out.stderr,
        },
        None => panic!(
            "child case '{case}' hung for more than {deadline:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Runs `body` in a child process: the test binary again, with only test `test_name` and
/// [`CHILD_ENV`]` = case`, checked from outside: it must exit successfully within `deadline`
/// (a hang is killed and reported). In the child, `body` runs; in a child run for another case
/// of the same test, nothing does.
pub fn isolated(test_name: &str, case: &str, deadline: Duration, body: impl FnOnce()) {
    match child_case() {
        Some(c) if c == case => body(),
        Some(_) => {}
        None => {
            let out = run_child(test_name, case, &[], deadline);
            assert!(
                out.status.success(),
                "child case '{case}' failed:\n{}",
                stderr(&out)
            );
        }
    }
}

/// The message of a panic payload (`&str` or `String`; empty for anything else).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// What a child process run by [`run_with_deadline`] left behind.
#[derive(Debug)]
pub struct Finished {
    /// Exit status; `None` when the child ran past the deadline and was killed.
    pub status: Option<ExitStatus>,
    /// Everything the child wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the child wrote to stderr.
    pub stderr: Vec<u8>,
}

impl Finished {
    /// Whether the child was killed at the deadline.
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// The exit code (`None` if killed by a signal or at the deadline).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs `cmd` with stdin from `/dev/null` and stdout/stderr captured, and waits for it; kills it
/// once it runs past `deadline` (then [`Finished::status`] is `None`). Both pipes are drained on
/// threads while the child runs, so a chatty child never blocks on a full pipe. The only error is
/// a failed spawn.
pub fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> std::io::Result<Finished> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_until(&mut child, Instant::now() + deadline);
    Ok(Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Reads `pipe` to its end on a new thread.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child` until `end`; past it (or if waiting fails), kills and reaps it and returns
/// `None`.
fn wait_until(child: &mut Child, end: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                // Our own child, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Text of a child's stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Address-space size of this process in bytes (`VmSize` from `/proc/self/status`).
pub fn vm_size() -> usize {
    status_kib("VmSize:") * 1024
}

/// Peak resident set size of this process in bytes (`VmHWM`).
pub fn peak_rss() -> usize {
    status_kib("VmHWM:") * 1024
}

/// Starts a peak-RSS measurement: resets the kernel's high-water mark to the current RSS (best
/// effort: `/proc/self/clear_refs` `5`) and returns the current RSS, the baseline to subtract
/// from a later [`peak_rss`].
///
/// Not the `VmHWM` read at the start: since Linux 6.2 the RSS counters are per-CPU, and the
/// high-water mark is taken from their approximate sum (off by up to 32 pages per CPU of
/// changes not yet folded in), while `VmRSS` is summed exactly on recent kernels. On a 2-vCPU
/// machine a `VmHWM` read at the start came out up to 190 KiB *below* `VmRSS`, which
/// made every growth measured from it that much larger than the memory really added. The
/// error left at the end (the high-water mark itself) is up to 32 pages per CPU either way.
pub fn start_peak_rss() -> usize {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    rss()
}

/// Current resident set size in bytes (`VmRSS`).
pub fn rss() -> usize {
    status_kib("VmRSS:") * 1024
}

fn status_kib(key: &str) -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sets `RLIMIT_AS` (soft and hard) for this process. Only for child processes of tests.
pub fn set_rlimit_as(bytes: usize) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Heap blocks taken by [`exhaust_heap`], linked through their first word (no allocation is
/// needed to hold them).
#[derive(Debug)]
pub struct HeapFiller {
    head: *mut u8,
    /// Bytes taken.
    pub bytes: usize,
}

/// Takes every block `malloc` will still hand out (under an `RLIMIT_AS` set just above the
/// current use): blocks of decreasing sizes until each size is refused, so that afterwards an
/// allocation of any size fails in the calling thread. Give the memory back with
/// [`HeapFiller::release`] (or leak it). Only for child processes of tests.
///
/// First it lets the test harness's main thread reach its wait for the test's result: that
/// thread's first blocking wait on a channel registers a thread-local destructor, and the C
/// library aborts the process ("failed to register TLS destructor: out of memory") if it does
/// so after the heap is gone — the harness's abort, not the code under test (seen about one run
/// in three under load without the pause).
pub fn exhaust_heap() -> HeapFiller {
    std::thread::sleep(Duration::from_millis(100));
    let mut f = HeapFiller {
        head: core::ptr::null_mut(),
        bytes: 0,
    };
    let mut size = 1usize << 20;
    while size >= 16 {
        let layout = std::alloc::Layout::from_size_align(size, 8).expect("layout");
        loop {
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { std::alloc::alloc(layout) };
            if p.is_null() {
                break;
            }
            // SAFETY: `p` is a fresh block of at least 16 bytes (two words), aligned to 8.
            unsafe { p.cast::<(*mut u8, usize)>().write_unaligned((f.head, size)) };
            f.head = p;
            f.bytes += size;
        }
        size /= 2;
    }
    f
}

impl HeapFiller {
    /// Gives every block back.
    pub fn release(self) {
        let mut p = self.head;
        while !p.is_null() {
            // SAFETY: every block in the list was allocated by `exhaust_heap` with the size
            // stored in it, alignment 8, and is freed once.
            unsafe {
                let (next, size) = p.cast::<(*mut u8, usize)>().read_unaligned();
                std::alloc::dealloc(p, std::alloc::Layout::from_size_align_unchecked(size, 8));
                p = next;
            }
        }
    }
}

/// Writes `msg` to stderr with one `write(2)`: no lock, no allocation, so a `fork()` child may
/// use it while locks other threads of its parent held stay held.
pub fn say(msg: &str) {
    // SAFETY: `msg` is a valid buffer of `msg.len()` bytes; fd 2 is stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// How a `fork()` child that [`wait_forked`] waited for ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// It exited with status 0.
    Ok,
    /// It exited otherwise; the raw `waitpid` status.
    Failed(i32),
    /// It was still running at the deadline: killed and reaped.
    Hung,
}

/// Waits for the forked child `pid` until `deadline`; kills and reaps it if it is still running.
pub fn wait_forked(pid: libc::pid_t, deadline: Duration) -> Forked {
    let mut status = 0;
    let t = Instant::now();
    loop {
        // SAFETY: `pid` is our own child; `status` is a valid out-pointer.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            return if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                Forked::Ok
            } else {
                Forked::Failed(status)
            };
        }
        if t.elapsed() > deadline {
            // SAFETY: our own child; killed, then reaped so that it leaves no zombie.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Forked::Hung;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Forks; the child runs `f` and leaves with `_exit` and `f`'s code (101 if `f` panics); the
/// parent waits for it (killing it after `deadline`) and panics, naming `what`, unless it exited
/// with 0.
pub fn in_fork_child(what: &str, deadline: Duration, f: impl FnOnce() -> i32) {
    // SAFETY: fork in a test process; the child runs `f` and exits with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: leaving the fork child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    match wait_forked(pid, deadline) {
        Forked::Ok => {}
        Forked::Failed(status) => panic!("fork child failed ({what}): status {status}"),
        Forked::Hung => panic!("fork child hung ({what})"),
    }
}
