//! ember-driver integration tests: one binary, one module per area.
mod adaptive;
mod dataframe;
mod engine;
mod history;
mod memory;
mod object_store;
mod runtime_filter;
mod scalar_subquery;
mod stream;
mod stream_aggregates;
mod stream_data_loss;
mod stream_join;
mod stream_sources;
mod stream_state;
mod tpcds;
mod tpch;
