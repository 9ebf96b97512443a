//! CPU affinity of the calling thread (threads it spawns afterwards inherit it) and of child
//! processes, so a run can be confined to chosen cores; plus the other libc calls the runner
//! needs (signals, the clock tick, this thread's CPU time). The only `unsafe` of the crate.

#![allow(unsafe_code)]

/// The CPUs the calling thread may run on.
pub fn current() -> std::io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live out-parameter of the size passed; 0 means the calling thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE and `set` is initialised.
        .filter(|cpu| unsafe { libc::CPU_ISSET(*cpu, &set) })
        .collect())
}

/// Confines the calling thread to `cpus`.
pub fn set(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: `cpu_set_t` is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus {
        // SAFETY: `set` is initialised; CPU_SET ignores numbers at or above CPU_SETSIZE.
        unsafe { libc::CPU_SET(*cpu, &mut set) };
    }
    // SAFETY: `set` is initialised and of the size passed; 0 means the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd`'s process start confined to `cpus` (set between fork and exec).
pub fn pin_command(cmd: &mut std::process::Command, cpus: Vec<usize>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec; it only fills a stack value and
    // calls sched_setaffinity, which is async-signal-safe, and allocates nothing (`cpus` was
    // built before the fork).
    unsafe {
        cmd.pre_exec(move || set(&cpus));
    }
}

/// Sends `sig` to process `pid` (errors ignored: it may have exited).
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes plain integers; a stale pid is answered with ESRCH.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Clock ticks per second of `/proc` CPU times (`sysconf(_SC_CLK_TCK)`, 100 when unknown).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes a constant and returns a number.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// CPU seconds (user + system) the calling thread has used, at microsecond resolution.
pub fn thread_cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the whole `rusage` it is pointed at (zeroed beforehand, so it is
    // initialised even if the call failed); RUSAGE_THREAD reads only this thread's counters.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr());
        ru.assume_init()
    };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
