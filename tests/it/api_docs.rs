//! The backend integration guide (`docs/api.md`) as a reader runs it: every
//! ```sh block, in order, in one shell, with curl against a real server and
//! the real `klav api-key`. A step that fails (curl's `-f`: any HTTP error)
//! fails the test, and what the steps did is checked in the database.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::*;

/// The ```sh blocks of a Markdown text, in order.
fn sh_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_guides_curl_examples_run_against_a_server() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl is not installed: the guide's examples are not run");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/api.md")).unwrap();
    let blocks = sh_blocks(&guide);
    assert!(blocks.len() >= 8, "{} sh blocks", blocks.len());
    let script = format!("set -eu\n{}", blocks.join("\n"));

    let s = TestServer::start();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_klav"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = std::env::temp_dir().join(format!("klav-it-api-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env("PATH", path)
        .env("DATABASE_URL", &s.db_url)
        .env("KLAV_URL", format!("http://{}", s.addr))
        .env_remove("KLAV_API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the guide's examples failed:\n{stdout}\n{stderr}"
    );
    for shown in [
        "\"status\":\"JOINED\"",
        "\"status\":\"BANNED\"",
        "deploy finished",
        "maintenance tonight at 22:00",
        "\"status\":\"DISCONNECTED\"",
        "\"status\":\"REVOKED\"",
    ] {
        assert!(stdout.contains(shown), "no {shown} in:\n{stdout}");
    }
    // What the steps did, as the database has it.
    assert_eq!(
        s.count(
            "SELECT count(*) FROM klav_api_keys WHERE name = 'my-backend'",
            &[]
        ),
        1
    );
    assert_eq!(
        s.count(
            "SELECT count(*) FROM klav_room_bans WHERE username = 'joon'",
            &[]
        ),
        1
    );
    assert_eq!(
        s.count(
            "SELECT klav_token_gen FROM users WHERE username = 'mina'",
            &[]
        ),
        1
    );
    assert_eq!(
        s.count(
            "SELECT count(*) FROM chat_logs WHERE from_user = 'deploybot' AND client_id = 'deploy-4711'",
            &[]
        ),
        1
    );
}
