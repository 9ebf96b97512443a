//! The `rdmq-broker` command line: generated help, flags from the environment, errors that name
//! the flag.

use std::process::Command;

fn broker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rdmq-broker"))
}

#[test]
fn help_lists_the_flags_and_their_environment_variables() {
    let out = broker().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--listen <URL>",
        "--store-dir <DIR>",
        "--flush <sync|async>",
        "RDMQ_BROKER_LISTEN",
        "--metrics-listen",
    ] {
        assert!(text.contains(want), "help lacks {want}:\n{text}");
    }
}

#[test]
fn a_flag_from_the_environment_is_checked_like_one_on_the_command_line() {
    let dir = std::env::temp_dir().join(format!("rdmq-cli-{}", std::process::id()));
    let out = broker()
        .args(["--listen", "tcp://127.0.0.1:0", "--store-dir"])
        .arg(&dir)
        .env("RDMQ_BROKER_FLUSH", "maybe")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--flush maybe") && err.contains("sync or async"),
        "{err}"
    );
}

#[test]
fn unknown_flags_and_missing_values_name_the_flag() {
    for (args, want) in [
        (&["--bogus", "1"][..], "--bogus"),
        (&["--listen"][..], "--listen"),
    ] {
        let out = broker().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
