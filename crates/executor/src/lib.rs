//! ember executor process (cluster mode lands with the cluster issue).
