//! The processes of a headline run and what is read off them: starting a broker, a proxy and
//! load generators (pinned where the placement says), and sampling `/proc` — CPU time, context
//! switches, I/O syscalls — plus `perf stat` syscall counts where perf works.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::affinity;

/// A started process whose stdout lines arrive on a channel.
#[derive(Debug)]
pub struct Proc {
    /// What it is (`broker`, `proxy`, `loadgen`).
    pub role: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    stdin: Option<std::process::ChildStdin>,
}

impl Proc {
    /// Starts `exe args…` with stdout piped, stderr to `log`, confined to `cpus` when given.
    pub fn spawn(
        role: &'static str,
        exe: &Path,
        args: &[String],
        cpus: Option<&[usize]>,
        log: &Path,
    ) -> Result<Proc, String> {
        Self::start(role, exe, args, cpus, log, false)
    }

    /// As [`Proc::spawn`], with stdin piped for [`Proc::send_line`] (its end, when the `Proc`
    /// drops, tells the process to finish).
    pub fn spawn_interactive(
        role: &'static str,
        exe: &Path,
        args: &[String],
        cpus: Option<&[usize]>,
        log: &Path,
    ) -> Result<Proc, String> {
        Self::start(role, exe, args, cpus, log, true)
    }

    fn start(
        role: &'static str,
        exe: &Path,
        args: &[String],
        cpus: Option<&[usize]>,
        log: &Path,
        interactive: bool,
    ) -> Result<Proc, String> {
        let err = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(if interactive {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(err)
            .env("RUST_LOG", "warn");
        if let Some(cpus) = cpus {
            affinity::pin_command(&mut cmd, cpus.to_vec());
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {role} ({}): {e}", exe.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            role,
            child,
            lines,
            stdin,
        })
    }

    /// Writes `line` to the process's stdin (started with [`Proc::spawn_interactive`]).
    pub fn send_line(&mut self, line: &str) -> Result<(), String> {
        use std::io::Write;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{} has no stdin", self.role))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("{}: {e}", self.role))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, within `timeout`.
    pub fn line(&mut self, timeout: Duration) -> Result<String, String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Ok(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("{} said nothing for {timeout:?}", self.role))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                Err(format!("{} exited ({status:?}) early", self.role))
            }
        }
    }

    /// Reads lines until one starts with `prefix`; returns the rest of it.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.line(left)?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(mut self, grace: Duration) {
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the exit status, killing it after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                Ok(Some(s)) => return Err(format!("{} failed: {s}", self.role)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!("{} did not finish in {timeout:?}", self.role));
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        affinity::kill(pid, sig);
    }
}

/// Counters of one process at one instant, from `/proc/<pid>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User CPU (clock ticks), threads that exited included.
    pub utime: u64,
    /// System CPU (clock ticks).
    pub stime: u64,
    /// Voluntary context switches summed over live threads (each one a block, so a wake-up).
    pub voluntary: u64,
    /// Involuntary context switches summed over live threads.
    pub involuntary: u64,
    /// Read-family plus write-family syscalls (`/proc/<pid>/io` syscr + syscw).
    pub io_syscalls: u64,
}

impl ProcSample {
    /// Reads `/proc/<pid>`.
    pub fn read(pid: u32) -> Result<ProcSample, String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let mut s = ProcSample {
            utime: num(11),
            stime: num(12),
            ..Default::default()
        };
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                if let Ok(text) = std::fs::read_to_string(t.path().join("status")) {
                    for l in text.lines() {
                        let v = || {
                            l.split(':')
                                .nth(1)
                                .and_then(|v| v.trim().parse::<u64>().ok())
                                .unwrap_or(0)
                        };
                        if l.starts_with("voluntary_ctxt_switches") {
                            s.voluntary += v();
                        } else if l.starts_with("nonvoluntary_ctxt_switches") {
                            s.involuntary += v();
                        }
                    }
                }
            }
        }
        if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
            for l in io.lines() {
                if let Some(v) = l
                    .strip_prefix("syscr:")
                    .or_else(|| l.strip_prefix("syscw:"))
                {
                    s.io_syscalls += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        Ok(s)
    }

    /// The counts between `earlier` and `self`.
    pub fn since(&self, earlier: &ProcSample) -> ProcSample {
        ProcSample {
            utime: self.utime.saturating_sub(earlier.utime),
            stime: self.stime.saturating_sub(earlier.stime),
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
            io_syscalls: self.io_syscalls.saturating_sub(earlier.io_syscalls),
        }
    }
}

/// Clock ticks per second of `/proc` CPU times.
pub fn ticks_per_second() -> f64 {
    affinity::clock_ticks() as f64
}

/// The whole machine's CPU time from the first line of `/proc/stat` (ticks).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineSample {
    /// Non-idle time of this machine: user, nice, system, irq, softirq.
    pub busy: u64,
    /// Soft-interrupt time alone (loopback TCP's receive path runs here).
    pub softirq: u64,
    /// Time the hypervisor ran something else while a vCPU wanted to run (not in `busy`).
    pub steal: u64,
}

impl MachineSample {
    /// Reads `/proc/stat`.
    pub fn read() -> MachineSample {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let line = text.lines().next().unwrap_or("");
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        MachineSample {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            softirq: at(6),
            steal: at(7),
        }
    }

    /// The ticks between `earlier` and `self`.
    pub fn since(&self, earlier: &MachineSample) -> MachineSample {
        MachineSample {
            busy: self.busy.saturating_sub(earlier.busy),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// Counting every syscall and context switch of a process with `perf stat` (the
/// `raw_syscalls:sys_enter` tracepoint, all threads), while a window lasts.
#[derive(Debug)]
pub struct PerfCount {
    child: Child,
}

/// Whether `perf stat` can count syscalls here; mounts tracefs when it is missing and we may.
pub fn perf_available() -> Result<(), String> {
    let probe = || {
        Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    let ok = |o: &std::process::Output| {
        o.status.success() && String::from_utf8_lossy(&o.stderr).contains("raw_syscalls:sys_enter")
    };
    match probe() {
        Err(e) => return Err(format!("perf not found ({e})")),
        Ok(o) if ok(&o) => return Ok(()),
        Ok(_) => {}
    }
    let _ = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .stderr(Stdio::null())
        .status();
    match probe() {
        Ok(o) if ok(&o) => Ok(()),
        Ok(o) => Err(format!(
            "perf cannot count raw_syscalls:sys_enter: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Err(e.to_string()),
    }
}

impl PerfCount {
    /// Starts counting `pid`'s syscalls and context switches.
    pub fn start(pid: u32) -> Result<PerfCount, String> {
        let child = Command::new("perf")
            .args([
                "stat",
                "-x,",
                "-e",
                "raw_syscalls:sys_enter,context-switches",
                "-p",
                &pid.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("perf: {e}"))?;
        Ok(PerfCount { child })
    }

    /// Stops and returns `(syscalls, context switches)`.
    pub fn stop(mut self) -> Result<(u64, u64), String> {
        signal(self.child.id(), libc::SIGINT);
        let out = self.child.wait_with_output_bounded()?;
        let mut sys = None;
        let mut cs = None;
        for l in out.lines() {
            let f: Vec<&str> = l.split(',').collect();
            let v = f.first().and_then(|v| v.parse::<u64>().ok());
            match f.get(2) {
                Some(&"raw_syscalls:sys_enter") => sys = v,
                Some(&"context-switches") => cs = v,
                _ => {}
            }
        }
        match (sys, cs) {
            (Some(s), Some(c)) => Ok((s, c)),
            _ => Err(format!("perf printed no counts: {}", out.trim())),
        }
    }
}

trait WaitBounded {
    fn wait_with_output_bounded(&mut self) -> Result<String, String>;
}

impl WaitBounded for Child {
    fn wait_with_output_bounded(&mut self) -> Result<String, String> {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.kill();
                    let _ = self.wait();
                    return Err("perf did not stop".into());
                }
            }
        }
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        Ok(s)
    }
}

/// Where the processes run: CPU sets per role, or `None` for anywhere.
#[derive(Debug, Clone)]
pub struct Placement {
    /// `split` or `shared`.
    pub name: String,
    /// The broker's CPUs.
    pub broker: Option<Vec<usize>>,
    /// The proxy's CPUs.
    pub proxy: Option<Vec<usize>>,
    /// The load generator's CPUs.
    pub loadgen: Option<Vec<usize>>,
}

impl Placement {
    /// `split`: proxy and broker on CPUs of their own (with 2 CPUs the load generator shares the
    /// proxy's); `shared`: no pinning.
    pub fn new(name: &str) -> Result<Placement, String> {
        let cpus = affinity::current().map_err(|e| format!("affinity: {e}"))?;
        match name {
            "shared" => Ok(Placement {
                name: name.into(),
                broker: None,
                proxy: None,
                loadgen: None,
            }),
            "split" if cpus.len() >= 3 => Ok(Placement {
                name: name.into(),
                proxy: Some(vec![cpus[0]]),
                broker: Some(vec![cpus[1]]),
                loadgen: Some(cpus[2..].to_vec()),
            }),
            "split" if cpus.len() == 2 => Ok(Placement {
                name: name.into(),
                proxy: Some(vec![cpus[0]]),
                broker: Some(vec![cpus[1]]),
                loadgen: Some(vec![cpus[0]]),
            }),
            "split" => Err("placement `split` needs at least 2 CPUs; use `shared`".into()),
            other => Err(format!("unknown placement `{other}` (split, shared)")),
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        let show = |c: &Option<Vec<usize>>| match c {
            Some(c) => format!(
                "CPU {}",
                c.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            None => "any CPU".into(),
        };
        format!(
            "{}: broker on {}, proxy on {}, load generator on {}",
            self.name,
            show(&self.broker),
            show(&self.proxy),
            show(&self.loadgen)
        )
    }
}

/// The programs run: the real binaries from `--bin-dir`, or this executable re-run as them.
#[derive(Debug, Clone)]
pub struct Programs {
    /// Broker command (program and leading arguments).
    pub broker: (PathBuf, Vec<String>),
    /// Proxy command.
    pub proxy: (PathBuf, Vec<String>),
    /// Load generator command.
    pub loadgen: (PathBuf, Vec<String>),
    /// How they were found, for the report.
    pub origin: String,
}

impl Programs {
    /// Finds the programs.
    pub fn find(bin_dir: Option<&Path>) -> Result<Programs, String> {
        let me = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
        let selfcmd = |sub: &str| (me.clone(), vec![sub.to_owned()]);
        match bin_dir {
            Some(dir) => {
                let bin = |name: &str| {
                    let p = dir.join(name);
                    if p.is_file() {
                        Ok((p, Vec::new()))
                    } else {
                        Err(format!(
                            "{} not found (build it, or drop --bin-dir)",
                            p.display()
                        ))
                    }
                };
                Ok(Programs {
                    broker: bin("rdmq-broker")?,
                    proxy: bin("rdmq-proxy")?,
                    loadgen: selfcmd("loadgen"),
                    origin: format!("rdmq-broker and rdmq-proxy from {}", dir.display()),
                })
            }
            None => Ok(Programs {
                broker: selfcmd("broker"),
                proxy: selfcmd("proxy"),
                loadgen: selfcmd("loadgen"),
                origin:
                    "rdmq-bench re-run as `broker` and `proxy` (the binaries' own main functions)"
                        .into(),
            }),
        }
    }
}
