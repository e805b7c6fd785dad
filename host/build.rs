//! Embeds the git commit the binary is built from, for `sandpiper --version`:
//! `SANDPIPER_GIT_COMMIT`, the short hash plus `-dirty` when tracked files
//! differ from it, or `unknown` outside a git checkout (a source archive).
//! A build without `.git` (a container build, say) can pass the commit in
//! the environment variable of the same name.

use std::path::{Path, PathBuf};
use std::process::Command;

const VAR: &str = "SANDPIPER_GIT_COMMIT";

fn main() {
    println!("cargo:rerun-if-env-changed={VAR}");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = match std::env::var(VAR).ok().filter(|c| !c.trim().is_empty()) {
        Some(given) => given.trim().to_owned(),
        None => from_git(&manifest).unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env={VAR}={commit}");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn from_git(dir: &Path) -> Option<String> {
    // Where git keeps HEAD, the refs and the index (a worktree's `.git` is a
    // file naming another directory): the script reruns when they change,
    // that is on a commit, a checkout or staging, not on every build.
    let git_dir = dir.join(git(dir, &["rev-parse", "--git-dir"])?);
    let common =
        git(dir, &["rev-parse", "--git-common-dir"]).map_or(git_dir.clone(), |c| dir.join(c));
    for path in [
        git_dir.join("HEAD"),
        git_dir.join("index"),
        common.join("refs"),
        common.join("packed-refs"),
    ] {
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    // An edit to the host's own sources rebuilds the crate anyway: rerun
    // then too, so `-dirty` follows it.
    for path in ["src", "Cargo.toml", "../Cargo.lock", "../wit"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let hash = git(dir, &["rev-parse", "--short", "HEAD"])?;
    // Tracked files only; no optional locks, so a build never takes the
    // index lock from a git command running beside it.
    let dirty = git(
        dir,
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_some_and(|changes| !changes.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}
