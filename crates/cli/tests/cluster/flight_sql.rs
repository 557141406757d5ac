//! Arrow Flight SQL on a driver process (`ember driver --flight-sql`), queried by a
//! real client: ADBC's Flight SQL driver from Python, installed into a virtualenv.

use std::path::PathBuf;

use super::*;
use ember_driver::{answers, tpch};

/// A Python with the pinned client, ADBC's Flight SQL driver with pyarrow.
fn client_python() -> PathBuf {
    crate::python_venv(
        "flight-sql-venv-1.13.0",
        &[
            "adbc-driver-flightsql==1.13.0",
            "adbc-driver-manager==1.13.0",
            "pyarrow==26.0.1",
        ],
        "import adbc_driver_flightsql.dbapi, pyarrow",
    )
}

/// `GET path` of the UI at `addr` with the secret (HTTP basic auth), its body.
fn ui_get(addr: &str, path: &str, secret: &str) -> String {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("ember:{secret}"));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn adbc_queries_a_cluster_over_flight_sql() {
    let python = client_python();
    cluster_runtime().block_on(async {
        let data = tpch_sf01();
        let work = tempfile::tempdir().unwrap();
        let secret = "flight sql secret";
        let secret_file = work.path().join("secret");
        std::fs::write(&secret_file, secret).unwrap();
        let secret_arg = secret_file.to_str().unwrap();
        let (port, flight, ui) = (free_port(), free_port(), free_port());
        let log = work.path().join("driver.log");
        let flight_bind = format!("127.0.0.1:{flight}");
        let ui_bind = format!("127.0.0.1:{ui}");
        let _driver = start_driver(
            port,
            &log,
            &[
                "--secret-file",
                secret_arg,
                "--flight-sql",
                &flight_bind,
                "--ui-port",
                &ui_bind,
            ],
        );
        wait_for_log(&log, &["Flight SQL at grpc://"], 0, 30);
        let address = format!("http://127.0.0.1:{port}");
        let _executors =
            start_executors_with(&address, work.path(), 2, &["--secret-file", secret_arg]);

        let out = work.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        for q in tpch::QUERY_NUMBERS {
            std::fs::write(out.join(format!("q{q:02}.sql")), tpch::query(q).unwrap()).unwrap();
        }
        let client = Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/cluster/flight_sql_client.py"
            ))
            .arg(format!("grpc://{flight_bind}"))
            .arg(&secret_file)
            .arg(&data)
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            client.status.success(),
            "the ADBC client failed:\n{}\ndriver log:\n{}",
            String::from_utf8_lossy(&client.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let summary: serde_json::Value = serde_json::from_slice(&client.stdout).unwrap();

        // Every TPC-H answer equals DataFusion's on the same files.
        let baseline = datafusion::prelude::SessionContext::new();
        tpch::register_tables(&baseline, &data).await.unwrap();
        for q in tpch::QUERY_NUMBERS {
            let sql = tpch::query(q).unwrap();
            let expected = baseline.sql(&sql).await.unwrap().collect().await.unwrap();
            let file = std::fs::File::open(out.join(format!("q{q:02}.arrow"))).unwrap();
            let got: Vec<_> = arrow::ipc::reader::FileReader::try_new(file, None)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            if let Some(diff) =
                answers::difference(answers::is_ordered(&sql), &got, &expected).unwrap()
            {
                panic!("q{q} over Flight SQL: {diff}");
            }
        }

        // A prepared statement with a parameter, run twice with different values.
        assert_eq!(summary["prepared"], 5, "{summary}");
        assert_eq!(summary["prepared_again"], 15, "{summary}");
        // The wrong secret was refused, and the refusal logged.
        let refused = summary["wrong_secret"].as_str().unwrap();
        assert!(refused.contains("secret"), "{summary}");
        wait_for_log(&log, &["refused", "Flight SQL"], 0, 10);
        // A bad statement is an error with ember's message; the connection goes on.
        let bad = summary["bad_statement"].as_str().unwrap();
        assert!(bad.contains("no_such_table"), "{summary}");
        assert_eq!(summary["after_error"], 42, "{summary}");
        // A cancelled query stops: the next one gets the slots.
        let cancelled = summary["cancelled"].as_str().unwrap();
        assert!(cancelled.to_lowercase().contains("cancel"), "{summary}");
        assert_eq!(summary["after_cancel"], 5, "{summary}");
        // The catalog lists the tables the client created, with their columns.
        let tables = summary["tables"].as_array().unwrap();
        let lineitem = tables
            .iter()
            .find(|t| t["name"] == "lineitem")
            .unwrap_or_else(|| panic!("no lineitem in {tables:?}"));
        assert!(
            lineitem["columns"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "l_orderkey"),
            "{lineitem}"
        );
        assert!(
            summary["table_types"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "TABLE"),
            "{summary}"
        );
        // The statements show in the UI's SQL page like any other query.
        let sql_page = ui_get(&ui_bind, "/api/v1/sql", secret);
        assert!(sql_page.contains("n_regionkey"), "{sql_page}");
    });
}

/// Runs `code` with the client's Python and `args`; its stdout, or its stderr as error.
fn run_client(python: &Path, code: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(python)
        .args(["-c", code])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

const TLS_CLIENT: &str = r#"
import sys
import adbc_driver_flightsql.dbapi as flight_sql
uri, secret, ca, auth = sys.argv[1:5]
if auth == "bearer":
    options = {"adbc.flight.sql.authorization_header": "Bearer " + secret}
else:
    options = {"username": "ember", "password": secret}
if ca:
    options["adbc.flight.sql.client_option.tls_root_certs"] = open(ca).read()
with flight_sql.connect(uri, db_kwargs=options, autocommit=True) as conn, conn.cursor() as cur:
    cur.execute("SELECT count(*) FROM (VALUES (1), (2), (3)) AS t(x)")
    print(cur.fetchall()[0][0])
"#;

#[test]
fn a_tls_driver_serves_flight_sql_over_tls_only() {
    let python = client_python();
    let work = tempfile::tempdir().unwrap();
    let (cert, key) = super::tls::self_signed_cert(work.path());
    let secret = "tls flight secret";
    let secret_file = work.path().join("secret");
    std::fs::write(&secret_file, secret).unwrap();
    let tls = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--secret-file",
        secret_file.to_str().unwrap(),
    ];
    let (port, flight) = (free_port(), free_port());
    let log = work.path().join("driver.log");
    let flight_bind = format!("127.0.0.1:{flight}");
    let mut args = tls.to_vec();
    args.extend(["--flight-sql", &flight_bind, "--no-ui"]);
    let _driver = start_driver(port, &log, &args);
    wait_for_log(&log, &["Flight SQL at grpc+tls://"], 0, 30);
    let _executors =
        start_executors_with(&format!("https://127.0.0.1:{port}"), work.path(), 1, &tls);

    let ca = cert.to_str().unwrap();
    let tls_uri = format!("grpc+tls://{flight_bind}");
    let answer = run_client(&python, TLS_CLIENT, &[&tls_uri, secret, ca, "basic"]);
    assert_eq!(answer, Ok("3".to_string()));
    // The secret itself as a bearer token will do too; another token will not.
    let answer = run_client(&python, TLS_CLIENT, &[&tls_uri, secret, ca, "bearer"]);
    assert_eq!(answer, Ok("3".to_string()));
    let wrong = run_client(&python, TLS_CLIENT, &[&tls_uri, "guess", ca, "bearer"]);
    assert!(
        wrong.as_ref().is_err_and(|e| e.contains("secret")),
        "{wrong:?}"
    );
    // A plain connection gets nowhere.
    let plain_uri = format!("grpc://{flight_bind}");
    let plain = run_client(&python, TLS_CLIENT, &[&plain_uri, secret, "", "basic"]);
    assert!(plain.is_err(), "{plain:?}");
}
