//! Ballast's front-ends, each a thin adapter over `VolumeService`: the REST
//! API (this issue), and later the Docker volume plugin, CSI and metrics.
//! Adapters translate protocol types into one core call and map the core's
//! error exhaustively; they hold no volume logic.

pub mod api;
pub mod listen;
pub mod rest;
