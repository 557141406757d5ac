//! A TLS cluster serves a CLI client and refuses plain connections.

use super::*;

/// A self-signed certificate for 127.0.0.1 and localhost, made by `openssl`.
pub(super) fn self_signed_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{made:?}");
    (cert, key)
}

#[test]
fn a_tls_cluster_serves_a_cli_client_and_refuses_plain_connections() {
    let work = tempfile::tempdir().unwrap();
    let data = tpch_sf01();
    let (cert, key) = self_signed_cert(work.path());
    let secret = work.path().join("secret");
    std::fs::write(&secret, "tls and a secret").unwrap();
    let tls = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--secret-file",
        secret.to_str().unwrap(),
    ];
    let port = free_port();
    let driver_log = work.path().join("driver.log");
    let _driver = start_driver(port, &driver_log, &tls);
    wait_for_log(&driver_log, &["driver listening at https://"], 0, 30);
    let _executors =
        start_executors_with(&format!("https://127.0.0.1:{port}"), work.path(), 2, &tls);

    let master = format!("ember://127.0.0.1:{port}");
    let q3 = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benchmarks/tpch/q3.sql");
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["sql", "--master", &master, "--format", "csv"])
        .args([
            "--tls-ca",
            cert.to_str().unwrap(),
            "--secret-file",
            secret.to_str().unwrap(),
        ])
        .arg("--tpch")
        .arg(&data)
        .args(["-f", q3])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let rows = String::from_utf8_lossy(&out.stdout);
    assert_eq!(rows.lines().count(), 11, "{rows}");
    assert!(
        rows.lines().nth(1).unwrap().starts_with("223140,"),
        "{rows}"
    );

    // Without TLS a client gets an error, not rows and not a hang.
    let plain = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["sql", "--master", &master, "-e", "SELECT 1"])
        .args(["--secret-file", secret.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!plain.status.success(), "{plain:?}");
    send_garbage(port);
    // Still serving.
    let again = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "sql",
            "--master",
            &master,
            "-e",
            "SELECT 41 + 1 AS x",
            "--format",
            "csv",
        ])
        .args([
            "--tls-ca",
            cert.to_str().unwrap(),
            "--secret-file",
            secret.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "x\n42\n",
        "{again:?}"
    );
}
