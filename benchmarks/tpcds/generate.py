#!/usr/bin/env python3
"""Generates TPC-DS data and its 99 queries for ember's tests and benchmarks.

    python3 benchmarks/tpcds/generate.py --sf 1 --out /tmp/tpcds-sf1

Uses DuckDB's tpcds extension (dsdgen) from the Python packages duckdb==1.5.5 and
duckdb-extension-tpcds==1.5.5 (installed with pip into a virtualenv under ~/.cache/ember when this Python lacks
them), loaded by its path:
nothing is downloaded from DuckDB's servers. Writes

    OUT/<table>/part-1.parquet   the 24 tables
    OUT/queries/qN.sql           the 99 queries (N = 1..99), as dsqgen renders them
    OUT/_SUCCESS                 "sf=<sf>", last: a folder without it is incomplete

Dates are Parquet DATE, decimals DECIMAL(7, 2) as in the specification. Two
generators racing into one folder take turns (a lock file); the second finds the
data there.
"""

import argparse
import fcntl
import os
import subprocess
import sys

VERSION = "1.5.5"


def have_packages():
    try:
        import duckdb
        import duckdb_extension_tpcds  # noqa: F401
        return duckdb.__version__ == VERSION
    except ImportError:
        return False


def ensure_packages():
    """Runs this script again in a virtualenv of its own (under ~/.cache/ember) when
    this Python lacks the packages: nothing is installed into the system's Python."""
    if have_packages():
        return
    if os.environ.get("EMBER_TPCDS_VENV"):
        sys.exit(f"duckdb=={VERSION} and duckdb-extension-tpcds=={VERSION} are missing "
                 f"from {sys.executable} even after installing them")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    venv = os.path.join(cache, "ember", f"tpcds-venv-{VERSION}")
    python = os.path.join(venv, "bin", "python3")
    if not os.path.exists(python):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
    subprocess.check_call(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"duckdb=={VERSION}", f"duckdb-extension-tpcds=={VERSION}"])
    env = dict(os.environ, EMBER_TPCDS_VENV="1")
    sys.exit(subprocess.call([python, os.path.abspath(__file__)] + sys.argv[1:], env=env))


def extension_path():
    import duckdb_extension_tpcds
    root = os.path.dirname(duckdb_extension_tpcds.__file__)
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".duckdb_extension"):
                return os.path.join(dirpath, f)
    sys.exit(f"no .duckdb_extension file under {root}")


def generated(out, sf):
    try:
        with open(os.path.join(out, "_SUCCESS")) as f:
            return f.read() == f"sf={sf}\n"
    except OSError:
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sf", type=float, default=1.0, help="scale factor (default 1)")
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args()
    if not args.sf > 0:
        sys.exit(f"invalid scale factor {args.sf}: expected a number > 0")
    sf = f"{args.sf:g}"
    os.makedirs(args.out, exist_ok=True)
    if generated(args.out, sf):
        return
    ensure_packages()
    with open(os.path.join(args.out, ".ember-generate.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if generated(args.out, sf):
            return
        import duckdb
        con = duckdb.connect(config={"allow_unsigned_extensions": "true",
                                     "autoinstall_known_extensions": "false",
                                     "autoload_known_extensions": "false"})
        con.execute(f"LOAD '{extension_path()}'")
        con.execute(f"CALL dsdgen(sf={sf})")
        tables = [r[0] for r in con.execute("SHOW TABLES").fetchall()]
        for table in tables:
            folder = os.path.join(args.out, table)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".part-1.{os.getpid()}.tmp")
            con.execute(f"COPY {table} TO '{tmp}' (FORMAT parquet)")
            os.replace(tmp, os.path.join(folder, "part-1.parquet"))
        queries = os.path.join(args.out, "queries")
        os.makedirs(queries, exist_ok=True)
        for n, text in con.execute("SELECT query_nr, query FROM tpcds_queries()").fetchall():
            with open(os.path.join(queries, f"q{n}.sql"), "w") as f:
                f.write(text.strip() + "\n")
        tmp = os.path.join(args.out, f"._SUCCESS.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(f"sf={sf}\n")
        os.replace(tmp, os.path.join(args.out, "_SUCCESS"))
        print(f"TPC-DS SF {sf}: {len(tables)} tables and 99 queries in {args.out}")


if __name__ == "__main__":
    main()
