//! The command line as an operator meets it: `--help`, `--version`, the
//! import's own help, and what a mistyped argument gets. None of these may
//! read the configuration or start anything, so they run in an empty
//! directory with a configuration that would stop the server (a `.env` there,
//! or one in the environment, must not matter).

use std::path::PathBuf;
use std::process::{Command, Output};

/// An empty working directory holding a `.env` the server would refuse.
fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("klav-it-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), "PORT=seventy\n").unwrap();
    dir
}

fn klav(name: &str, args: &[&str]) -> Output {
    let dir = workdir(name);
    let out = Command::new(env!("CARGO_BIN_EXE_klav"))
        .args(args)
        .current_dir(&dir)
        .env("DATABASE_URL", "mysql://nobody@nowhere/none")
        .env("KLAV_DATA_DIR", dir.join("data"))
        .output()
        .unwrap();
    let created = dir.join("data").exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!created, "klav {args:?} created a data directory");
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_the_subcommands_and_where_configuration_comes_from() {
    for flag in ["--help", "-h"] {
        let out = klav("help", &[flag]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{flag}: {}", text(&out.stderr));
        assert!(
            stdout.starts_with(&format!("klav {}", env!("CARGO_PKG_VERSION"))),
            "{stdout}"
        );
        for needle in [
            "import-json <DIR> [--dry-run]",
            "--version",
            "environment",
            ".env",
            "DATABASE_URL",
            "README.md",
            "docs/operations.md",
        ] {
            assert!(
                stdout.contains(needle),
                "{flag}: no {needle:?} in\n{stdout}"
            );
        }
        // The server API's keys are managed from here.
        assert!(stdout.contains("api-key create|list|revoke"), "{stdout}");
    }
}

#[test]
fn help_names_only_documents_that_exist() {
    let out = klav("help-docs", &["--help"]);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for doc in ["README.md", "docs/operations.md"] {
        assert!(text(&out.stdout).contains(doc));
        assert!(root.join(doc).is_file(), "--help points to {doc}, missing");
    }
}

#[test]
fn version_prints_the_package_version() {
    for flag in ["--version", "-V"] {
        let out = klav("version", &[flag]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            format!("klav {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn import_help_is_about_the_import() {
    for flag in ["--help", "-h"] {
        let out = klav("import-help", &["import-json", flag]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        for needle in [
            "usage: klav import-json <DIR> [--dry-run]",
            "users.json",
            "friends_state.json",
            "chat_state.json",
            "--dry-run",
            "DATABASE_URL",
            "KLAV_DATA_DIR",
            "nothing",
        ] {
            assert!(stdout.contains(needle), "no {needle:?} in\n{stdout}");
        }
        // Not the server's help: nothing about HOST/PORT or other subcommands.
        assert!(!stdout.contains("PORT"), "{stdout}");
        assert!(!stdout.contains("--version"), "{stdout}");
    }
}

#[test]
fn unknown_arguments_exit_2_naming_the_argument() {
    for (args, named) in [
        (&["--bogus"][..], "\"--bogus\""),
        (&["serve"][..], "\"serve\""),
        (&["--help", "extra"][..], "\"extra\""),
        (&["--version", "extra"][..], "\"extra\""),
        (&["import-json", ".", "--frob"][..], "\"--frob\""),
        (&["import-json", "a", "b"][..], "\"b\""),
    ] {
        let out = klav("unknown", args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(stderr.contains("--help"), "{args:?}: {stderr}");
        // One clear line, not a screenful.
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn import_without_a_directory_exits_2() {
    let out = klav("import-nodir", &["import-json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("directory"), "{stderr}");
    assert!(stderr.contains("klav import-json --help"), "{stderr}");
}

#[test]
fn an_argument_that_is_not_utf8_is_refused_not_a_crash() {
    use std::os::unix::ffi::OsStrExt;
    let dir = workdir("non-utf8");
    let out = Command::new(env!("CARGO_BIN_EXE_klav"))
        .arg(std::ffi::OsStr::from_bytes(b"--\xff"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("unknown argument"));
}
