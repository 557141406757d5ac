//! The catalog commands of Flight SQL: catalogs, schemas, tables (with their Arrow
//! schemas), table types and the server's SQL info, read from a client's session.

use std::sync::LazyLock;

use arrow::record_batch::RecordBatch;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, SqlInfo,
};
use datafusion::datasource::TableType;
use datafusion::prelude::SessionContext;
use ember_core::{EmberError, Result};

/// What `GetSqlInfo` answers.
pub(super) static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut info = SqlInfoDataBuilder::new();
    info.append(SqlInfo::FlightSqlServerName, "ember");
    info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    // The Arrow format version of Schema.fbs.
    info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    info.append(SqlInfo::FlightSqlServerReadOnly, false);
    info.append(SqlInfo::FlightSqlServerSql, true);
    info.append(SqlInfo::FlightSqlServerSubstrait, false);
    info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    info.append(SqlInfo::FlightSqlServerCancel, true);
    info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    info.build().expect("static SQL info builds")
});

/// The table types `GetTableTypes` lists, as tables are shown.
const TABLE_TYPES: [&str; 3] = ["TABLE", "VIEW", "LOCAL TEMPORARY"];

fn table_type(t: TableType) -> &'static str {
    match t {
        TableType::Base => TABLE_TYPES[0],
        TableType::View => TABLE_TYPES[1],
        TableType::Temporary => TABLE_TYPES[2],
    }
}

fn arrow_err(e: impl std::fmt::Display) -> EmberError {
    EmberError::Internal(format!("Flight SQL catalog listing: {e}"))
}

pub(super) fn catalogs(ctx: &SessionContext, query: CommandGetCatalogs) -> Result<RecordBatch> {
    let mut out = query.into_builder();
    for name in ctx.catalog_names() {
        out.append(name);
    }
    out.build().map_err(arrow_err)
}

pub(super) fn schemas(ctx: &SessionContext, query: CommandGetDbSchemas) -> Result<RecordBatch> {
    let mut out = query.into_builder();
    for catalog in ctx.catalog_names() {
        if let Some(c) = ctx.catalog(&catalog) {
            for schema in c.schema_names() {
                out.append(&catalog, schema);
            }
        }
    }
    out.build().map_err(arrow_err)
}

/// Every table of every schema (the builder keeps those the command's filters match),
/// with its Arrow schema when the command asks for it.
pub(super) async fn tables(ctx: &SessionContext, query: CommandGetTables) -> Result<RecordBatch> {
    let mut out = query.into_builder();
    for catalog in ctx.catalog_names() {
        let Some(c) = ctx.catalog(&catalog) else {
            continue;
        };
        for schema_name in c.schema_names() {
            let Some(schema) = c.schema(&schema_name) else {
                continue;
            };
            for table in schema.table_names() {
                let Some(provider) = schema.table(&table).await? else {
                    continue;
                };
                out.append(
                    &catalog,
                    &schema_name,
                    &table,
                    table_type(provider.table_type()),
                    provider.schema().as_ref(),
                )
                .map_err(arrow_err)?;
            }
        }
    }
    out.build().map_err(arrow_err)
}

pub(super) fn table_types(query: CommandGetTableTypes) -> Result<RecordBatch> {
    let mut out = query.into_builder();
    for t in TABLE_TYPES {
        out.append(t);
    }
    out.build().map_err(arrow_err)
}

pub(super) fn sql_info(query: CommandGetSqlInfo) -> Result<RecordBatch> {
    query.into_builder(&SQL_INFO).build().map_err(arrow_err)
}
