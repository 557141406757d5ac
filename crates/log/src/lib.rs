//! ember-log: the embedded Kafka-like partitioned log (lands with the log issue).
