//! The command line as scripts call it (tests/run.sh, ci.sh): environment values included.

use std::process::Command;

/// Runs `handoff-bench ci` against a missing bin dir with BENCH_CI_EGG=`value`: the bench stops
/// at the missing binary, after clap accepted (or refused) the environment.
fn ci_with_env(value: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_handoff-bench"))
        .env("BENCH_CI_EGG", value)
        .args(["ci", "--bin-dir", "/nonexistent/handoff-bench-test"])
        .output()
        .expect("runs handoff-bench");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// tests/run.sh sets BENCH_CI_EGG=1: a shell's "1" (and "0", "true", "") must parse, not stop
/// the bench with a usage error.
#[test]
fn bench_ci_egg_takes_shell_values() {
    for v in ["1", "0", "true", "false", ""] {
        let (code, err) = ci_with_env(v);
        assert!(
            !err.contains("invalid value")
                && err.contains("/nonexistent/handoff-bench-test/handoff not found"),
            "BENCH_CI_EGG={v:?}: exit {code}: {err}"
        );
        assert_eq!(code, 2, "BENCH_CI_EGG={v:?}: {err}");
    }
}
