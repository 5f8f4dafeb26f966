//! The embedded PostgreSQL as the binary runs it: created on first start, one
//! klav per data directory, stopped with klav, advice when the server binaries
//! are missing, and private to klav (owner-only directories and socket, a
//! password).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use klav::db::embedded::{Cluster, PASSWORD_FILE};
use serde_json::json;

use crate::harness::*;

#[test]
fn embedded_cluster_lifecycle() {
    let dir = cluster_dir("emb");
    let mut klav = spawn_klav(&dir, &[]);
    let addr = klav.addr;
    assert!(
        dir.join("pg/PG_VERSION").exists(),
        "cluster created on first start"
    );
    let keeper = json!({"username": "keeper", "password": PASSWORD}).to_string();
    let r = http_to(addr, "POST", "/register", Some(&keeper));
    assert_eq!(r.json()["status"], "CREATED");

    // A second klav on the same directory fails clearly and leaves the first alone.
    let out = Command::new(env!("CARGO_BIN_EXE_klav"))
        .env_remove("DATABASE_URL")
        .env("KLAV_DATA_DIR", &dir)
        .env("PORT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another klav"), "{err}");
    assert_eq!(http_to(addr, "POST", "/login", Some(&keeper)).status, 200);

    // SIGTERM: exit 0 and the cluster is stopped.
    let status = klav.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        !dir.join("pg/postmaster.pid").exists(),
        "PostgreSQL stopped with klav"
    );

    // Data kept across restarts.
    let mut klav = spawn_klav(&dir, &[]);
    let addr = klav.addr;
    assert_eq!(http_to(addr, "POST", "/login", Some(&keeper)).status, 200);
    assert!(klav.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_postgres_binaries_exit_2_with_advice() {
    let dir = scratch_dir("nobin");
    let out = Command::new(env!("CARGO_BIN_EXE_klav"))
        .env_remove("DATABASE_URL")
        .env("KLAV_DATA_DIR", &dir)
        .env("KLAV_PG_BIN", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("apt-get install postgresql") && err.contains("DATABASE_URL"),
        "{err}"
    );
}

/// The embedded cluster is klav's alone: owner-only directories and socket, and
/// a password; a cluster made by an earlier version with `trust` is converted.
#[test]
fn embedded_cluster_is_private() {
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        return;
    }
    let dir = cluster_dir("private");
    let mut cluster = Cluster::start(&dir, &test_cluster_options()).unwrap();
    check_private(&cluster, &dir);
    cluster.stop().unwrap();
    drop(cluster);

    // What an earlier version left: trust authentication, no password file, open
    // directories.
    std::fs::write(
        dir.join("pg/pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    std::fs::remove_file(dir.join(PASSWORD_FILE)).unwrap();
    for d in [dir.clone(), dir.join("run")] {
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let cluster = Cluster::start(&dir, &test_cluster_options()).unwrap();
    check_private(&cluster, &dir);
    let hba = std::fs::read_to_string(dir.join("pg/pg_hba.conf")).unwrap();
    assert!(!hba.contains("trust"), "{hba}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

fn check_private(cluster: &Cluster, dir: &Path) {
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "data directory");
    assert_eq!(mode(&dir.join("pg")), 0o700, "cluster directory");
    assert_eq!(mode(cluster.socket_dir()), 0o700, "socket directory");
    assert_eq!(mode(&dir.join(PASSWORD_FILE)), 0o600, "password file");
    assert_eq!(
        mode(&cluster.socket_dir().join(".s.PGSQL.5432")),
        0o700,
        "socket"
    );
    // klav's URL works; the same without the password does not.
    let url = cluster.url("postgres");
    postgres::Client::connect(&url, postgres::NoTls).expect("klav connects");
    let no_password = format!(
        "postgresql://postgres@localhost/postgres?host={}&port=5432",
        cluster.socket_dir().display()
    );
    assert!(postgres::Client::connect(&no_password, postgres::NoTls).is_err());
    // Another local user cannot even reach the socket.
    if unsafe { libc::geteuid() } == 0 {
        let out = Command::new("runuser")
            .args(["-u", "nobody", "--", "psql", "-w", "-h"])
            .arg(cluster.socket_dir())
            .args(["-U", "postgres", "-d", "postgres", "-c", "SELECT 1"])
            .current_dir("/")
            .output()
            .expect("runuser and psql");
        assert!(
            !out.status.success(),
            "nobody connected: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Permission denied") || err.contains("password"),
            "{err}"
        );
    }
}

/// A data directory too long for a socket name puts the socket under /tmp, in a
/// directory created owner-only; one planted there by another user is refused.
#[test]
fn tmp_socket_dir_is_owner_only_and_checked() {
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        return;
    }
    let base = cluster_dir("long");
    let dir = base.join("d".repeat(100));
    let cluster = Cluster::start(&dir, &test_cluster_options()).unwrap();
    let socket_dir = cluster.socket_dir().to_path_buf();
    assert!(
        socket_dir.to_string_lossy().starts_with("/tmp/klav-"),
        "{}",
        socket_dir.display()
    );
    let meta = std::fs::metadata(&socket_dir).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    postgres::Client::connect(&cluster.url("postgres"), postgres::NoTls).expect("connects");
    drop(cluster);

    if unsafe { libc::geteuid() } == 0 {
        // Someone else got there first.
        std::fs::remove_dir_all(&socket_dir).unwrap();
        std::fs::create_dir(&socket_dir).unwrap();
        std::os::unix::fs::chown(&socket_dir, Some(65534), Some(65534)).unwrap();
        let err = Cluster::start(&dir, &test_cluster_options())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&socket_dir);
    let _ = std::fs::remove_dir_all(&base);
}
