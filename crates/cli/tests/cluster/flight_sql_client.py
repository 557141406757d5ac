"""A real Flight SQL client against `ember driver --flight-sql`: ADBC's Flight SQL
driver (adbc-driver-flightsql, with pyarrow).

    python3 flight_sql_client.py URI SECRET_FILE TPCH_DIR OUT_DIR

Runs every `OUT_DIR/qN.sql` and writes its answer to `OUT_DIR/qN.arrow`; prints a JSON
summary of the other checks on stdout.
"""

import glob
import json
import os
import sys
import threading
import time

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa

uri, secret_file, tpch_dir, out_dir = sys.argv[1:5]
secret = open(secret_file).read().strip()
summary = {}


def connect(password):
    return flight_sql.connect(
        uri, db_kwargs={"username": "ember", "password": password}, autocommit=True
    )


# A wrong secret is refused (at the handshake, or at the first call).
try:
    with connect("not the secret") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchall()
    summary["wrong_secret"] = "accepted"
except Exception as e:  # noqa: BLE001 - any refusal will do; its text is checked
    summary["wrong_secret"] = str(e)

with connect(secret) as conn:
    with conn.cursor() as cur:
        for table in sorted(os.listdir(tpch_dir)):
            if os.path.isdir(os.path.join(tpch_dir, table)):
                cur.execute(
                    f"CREATE EXTERNAL TABLE {table} STORED AS PARQUET "
                    f"LOCATION '{os.path.join(tpch_dir, table)}/'"
                )
        for path in sorted(glob.glob(os.path.join(out_dir, "q*.sql"))):
            cur.execute(open(path).read())
            table = cur.fetch_arrow_table()
            with pa.OSFile(path[: -len(".sql")] + ".arrow", "wb") as f:
                with pa.ipc.new_file(f, table.schema) as w:
                    w.write_table(table)

        cur.execute("SELECT count(*) AS n FROM nation WHERE n_regionkey < $1", parameters=(1,))
        summary["prepared"] = cur.fetchall()[0][0]
        cur.execute("SELECT count(*) AS n FROM nation WHERE n_regionkey < $1", parameters=(3,))
        summary["prepared_again"] = cur.fetchall()[0][0]

        try:
            cur.execute("SELECT * FROM no_such_table")
            cur.fetchall()
            summary["bad_statement"] = "accepted"
        except Exception as e:  # noqa: BLE001
            summary["bad_statement"] = str(e)
        cur.execute("SELECT 40 + 2 AS answer")
        summary["after_error"] = cur.fetchall()[0][0]

    # A query that would run for hours, cancelled: its tasks stop, and the next query
    # gets the executors' slots.
    with conn.cursor() as slow:
        outcome = {}

        def run_slow():
            try:
                slow.execute(
                    "SELECT count(*) FROM lineitem a JOIN lineitem b "
                    "ON a.l_suppkey = b.l_suppkey"
                )
                slow.fetchall()
                outcome["slow"] = "finished"
            except Exception as e:  # noqa: BLE001
                outcome["slow"] = str(e)

        thread = threading.Thread(target=run_slow)
        thread.start()
        time.sleep(3)
        slow.adbc_cancel()
        thread.join(timeout=60)
        summary["cancelled"] = outcome.get("slow", "still running")

    def after_cancel():
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM region")
            outcome["after_cancel"] = cur.fetchall()[0][0]

    thread = threading.Thread(target=after_cancel)
    thread.start()
    thread.join(timeout=60)
    summary["after_cancel"] = outcome.get("after_cancel", "stuck")

    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    tables = []
    for catalog in objects:
        for schema in catalog["catalog_db_schemas"] or []:
            for table in schema["db_schema_tables"] or []:
                columns = [c["column_name"] for c in table["table_columns"] or []]
                tables.append({"name": table["table_name"], "columns": columns})
    summary["tables"] = tables
    summary["table_types"] = sorted(conn.adbc_get_table_types())

print(json.dumps(summary))
